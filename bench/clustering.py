"""Clustering quality and speed: ours next to BERTopic's default pipeline on the same embeddings.

    python bench/clustering.py --data ../shared/datasets/banking77/test.csv

Both cluster the 3,080 banking77 test queries without their labels, from the same
all-MiniLM-L6-v2 embeddings (computed once, cached under bench/.cache/), in one run. Scores
against the 77 intents: NMI and ARI over all queries, unclustered ones counted as one group
(-1), so leaving queries out is not free. BERTopic runs its defaults (UMAP 5-d + HDBSCAN +
c-TF-IDF) with `min_topic_size=10`; its time includes its topic words, ours is the clustering
step alone (titles come with the clustering run, issue 5).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.clusters.algorithm import cluster_embeddings  # noqa: E402
from bench.common import ROOT, print_table  # noqa: E402

CACHE = ROOT / "bench" / ".cache"


def embed(texts: list[str]) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"cluster-embeddings-{key}.npy"
    if path.exists():
        return np.load(path)
    from app.nlp.embedder import TransformerEmbedder

    x = TransformerEmbedder().embed(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def main() -> int:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="CSV with text,label")
    parser.add_argument("--no-bertopic", action="store_true")
    args = parser.parse_args()
    with args.data.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    truth = np.array([r["label"] for r in rows])
    x = embed(texts)
    results = []
    start = time.perf_counter()
    ours = cluster_embeddings(x)
    results.append(("ours (kNN-smoothed PCA + HDBSCAN)", ours.labels, time.perf_counter() - start))
    if not args.no_bertopic:
        from bertopic import BERTopic

        start = time.perf_counter()
        topics, _ = BERTopic(min_topic_size=10, calculate_probabilities=False).fit_transform(
            texts, embeddings=x
        )
        results.append(("BERTopic default", np.array(topics), time.perf_counter() - start))
    table = []
    for name, labels, seconds in results:
        table.append(
            [
                name,
                f"{normalized_mutual_info_score(truth, labels):.4f}",
                f"{adjusted_rand_score(truth, labels):.4f}",
                str(len(set(labels.tolist()) - {-1})),
                f"{np.mean(labels == -1):.4f}",
                f"{seconds:.2f}",
            ]
        )
    print(f"\n{len(texts)} texts from {args.data}, {len(set(truth.tolist()))} true labels")
    print_table(table, ["method", "NMI", "ARI", "clusters", "outlier share", "wall s"])
    print(f"ours: {ours.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
