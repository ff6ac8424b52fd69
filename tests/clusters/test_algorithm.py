"""The clustering step on its own: planted groups are found, runs repeat exactly."""

from __future__ import annotations

import numpy as np

from app.clusters.algorithm import ClusterParams, cluster_embeddings, knn_smooth, pca


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six tight groups of 40 unit vectors in 384-d, plus 20 scattered ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 384))
    groups = [c + 0.35 * rng.normal(size=(40, 384)) * np.linalg.norm(c) / 19.6 for c in centres]
    noise = rng.normal(size=(20, 384))
    x = np.vstack([*groups, noise]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.concatenate([np.repeat(np.arange(6), 40), np.full(20, -1)])
    return x, truth


def test_planted_groups_are_found_and_noise_stays_out() -> None:
    x, truth = planted()
    result = cluster_embeddings(x, ClusterParams.for_size(len(x)))
    assert result.n_clusters == 6
    for g in range(6):
        members = result.labels[truth == g]
        assert len(set(members.tolist())) == 1 and members[0] >= 0  # one cluster per group
    assert np.all(result.labels[truth == -1] == -1)  # random vectors are near no centre
    assert abs(result.outlier_share - 20 / 260) < 1e-9
    assert np.allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)
    # Largest first: all groups have 40 members, so ties go by first member.
    assert result.labels[0] == 0 and result.labels[40] == 1


def test_two_runs_give_the_same_clusters() -> None:
    x, _ = planted(seed=3)
    a = cluster_embeddings(x)
    b = cluster_embeddings(x.copy())
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.centroids, b.centroids)


def test_adaptive_size_and_tiny_inputs() -> None:
    assert ClusterParams.for_size(3080).min_cluster_size == 10
    big = ClusterParams.for_size(100_000)  # fitted on a 30,000 sample
    assert (big.min_cluster_size, big.dims) == (31, 16)
    assert ClusterParams.for_size(10).min_cluster_size == 5
    x, _ = planted()
    few = cluster_embeddings(x[:3])
    assert few.n_clusters == 0 and list(few.labels) == [-1, -1, -1]


def test_smoothing_and_reduction_shapes() -> None:
    x, _ = planted()
    s = knn_smooth(x, 5, block=50)
    assert s.shape == x.shape and np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(knn_smooth(x, 1), x)
    z = pca(x, 16)
    assert z.shape == (len(x), 16)
    var = z.var(axis=0)
    assert np.all(np.diff(var) <= 1e-6)  # components in decreasing variance
