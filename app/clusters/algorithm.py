"""Group messages that report the same problem: the clustering step on stored embeddings.

Steps, all deterministic for the same input order:
1. Denoise: each unit vector is replaced by the mean of its `smooth_k` nearest neighbours
   (cosine, itself included), which pulls paraphrases of one problem together before density
   estimation. Computed in blocks, after the reduction below when there are many messages.
2. Reduce: PCA (eigenvectors of the covariance, so no randomness) to `dims`, re-normalised so
   Euclidean distance ranks like cosine.
3. HDBSCAN (the `hdbscan` package) with a minimum cluster size that grows with the number of
   messages. Above `sample_max` messages steps 1-3 run on a seeded random sample and the other
   messages go through step 4 like outliers.
4. In the original embedding space, a member further than `reassign_min_cosine` from its
   cluster centre leaves it (smoothing can carry an isolated message into a group), and an
   unclustered message at least that close to the nearest centre joins it; the rest stay
   unclustered and are reported.

Cluster numbers are ordered by size (largest first, ties by first member), so two runs on the
same data give the same labels. The parameters were chosen on a 3,080-query sample of
banking77's *train* split; `bench/clustering.py` scores them on its test split.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClusterParams:
    """Everything that decides a clustering."""

    min_cluster_size: int
    min_samples: int = 1
    smooth_k: int = 5
    dims: int = 64
    reassign_min_cosine: float = 0.4
    # Above this many messages, density is estimated on a seeded random sample of this size
    # and every other message joins its nearest centre (or stays out); HDBSCAN's cost grows
    # faster than linearly, the assignment linearly.
    sample_max: int = 30_000

    @classmethod
    def for_size(cls, n: int, **overrides: Any) -> ClusterParams:
        """Defaults that adapt to the number of messages: a minimum cluster size of about 10 at
        3,000 and 31 from 30,000 on (the sample size); above 20,000 messages HDBSCAN works in 16
        dimensions, where its space-partitioning trees stay fast (in 64 they do not)."""
        fitted = min(n, cls.sample_max)
        size = int(min(200, max(5, round(math.sqrt(max(fitted, 1)) / 5.5))))
        dims = 64 if fitted <= 20_000 else 16
        return cls(**{"min_cluster_size": size, "dims": dims, **overrides})


@dataclass
class Clustering:
    """Cluster number per message (-1: unclustered) and unit-length centres."""

    labels: np.ndarray
    centroids: np.ndarray  # (clusters, dim) in the embedding space
    params: ClusterParams
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def outlier_share(self) -> float:
        return float(np.mean(self.labels == -1)) if len(self.labels) else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "messages": len(self.labels),
            "clusters": self.n_clusters,
            "outlier_share": round(self.outlier_share, 4),
            "params": asdict(self.params),
            "seconds": self.seconds,
        }


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Project onto the top `dims` principal axes (eigen-decomposition of the covariance)."""
    dims = min(dims, x.shape[1], max(1, x.shape[0] - 1))
    centred = x - x.mean(axis=0, keepdims=True)
    cov = (centred.T @ centred) / max(1, x.shape[0] - 1)
    values, vectors = np.linalg.eigh(cov.astype(np.float64))
    top = vectors[:, np.argsort(values)[::-1][:dims]]
    return (centred @ top.astype(np.float32)).astype(np.float32)


def knn_smooth(x: np.ndarray, k: int, *, block: int = 2048) -> np.ndarray:
    """Each unit row replaced by the unit mean of its k most similar rows (itself included).

    Exact, in blocks of rows (torch's matrix product and top-k use every core; a block of
    2,048 rows against 100,000 is 800 MB)."""
    import torch

    n = x.shape[0]
    k = min(k, n)
    if k <= 1:
        return x
    out = np.empty_like(x)
    every = torch.from_numpy(np.ascontiguousarray(x))
    with torch.inference_mode():
        for start in range(0, n, block):
            sims = every[start : start + block] @ every.T
            idx = torch.topk(sims, k, dim=1).indices.numpy()
            out[start : start + block] = x[idx].mean(axis=1)
    return _unit(out)


def cluster_embeddings(embeddings: np.ndarray, params: ClusterParams | None = None) -> Clustering:
    """Cluster unit-length embeddings; see the module docstring for the steps."""
    import hdbscan

    x = _unit(np.asarray(embeddings, dtype=np.float32))
    n = x.shape[0]
    params = params or ClusterParams.for_size(n)
    seconds: dict[str, float] = {}
    if n < max(2, params.min_cluster_size):
        return Clustering(np.full(n, -1), np.zeros((0, x.shape[1]), np.float32), params, seconds)
    t = time.perf_counter()
    sample = np.arange(n)
    if n > params.sample_max:
        sample = np.sort(np.random.default_rng(0).choice(n, params.sample_max, replace=False))
    z = _unit(pca(knn_smooth(x[sample], params.smooth_k), params.dims))
    seconds["reduce"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    raw = np.full(n, -1, dtype=np.int64)
    raw[sample] = hdbscan.HDBSCAN(
        min_cluster_size=params.min_cluster_size,
        min_samples=params.min_samples,
        core_dist_n_jobs=os.cpu_count() or 1,
    ).fit_predict(z)
    seconds["hdbscan"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    labels, centroids = renumber(raw, x)
    if centroids.shape[0]:
        # Smoothing can carry an isolated message into a group; a member must also be close
        # to its centre in the original space.
        inside = np.where(labels >= 0)[0]
        fit = np.sum(x[inside] * centroids[labels[inside]], axis=1)
        labels[inside[fit < params.reassign_min_cosine]] = -1
        outliers = np.where(labels == -1)[0]
        if outliers.size:
            sims = x[outliers] @ centroids.T
            nearest = sims.argmax(axis=1)
            close = sims[np.arange(outliers.size), nearest] >= params.reassign_min_cosine
            labels[outliers[close]] = nearest[close]
            labels, centroids = renumber(labels, x)
    seconds["assign"] = round(time.perf_counter() - t, 3)
    return Clustering(labels, centroids, params, seconds)


def renumber(raw: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters numbered by size (largest first, ties by first member) with their centres."""
    ids = [c for c in np.unique(raw) if c >= 0]
    order = sorted(ids, key=lambda c: (-int(np.sum(raw == c)), int(np.argmax(raw == c))))
    labels = np.full(raw.shape[0], -1, dtype=np.int64)
    for new, old in enumerate(order):
        labels[raw == old] = new
    if not order:
        return labels, np.zeros((0, x.shape[1]), dtype=np.float32)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(len(order))])
    return labels, _unit(centroids)
