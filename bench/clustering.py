"""Clustering quality and speed: ours next to BERTopic's default pipeline on the same embeddings.

    python bench/clustering.py --data ../shared/datasets/banking77/test.csv
    python bench/clustering.py --scale 100000 --tweets TWEETS_CSV

Quality: both cluster the 3,080 banking77 test queries without their labels, from the same
all-MiniLM-L6-v2 embeddings (computed once, cached under bench/.cache/), in one run. Scores
against the 77 intents: NMI and ARI over all queries, unclustered ones counted as one group
(-1), so leaving queries out is not free. BERTopic runs its defaults (UMAP 5-d + HDBSCAN +
c-TF-IDF) with `min_topic_size=10`; both times include topic words (ours: spaCy parse of up to
30 members per cluster and c-TF-IDF, as a clustering run does), neither includes embedding.

Scale: the 20,001 support tweets are embedded once (cached), then repeated with small
perturbations of their embeddings (Gaussian noise, sd 0.01 per dimension, renormalised: cosine
about 0.98 to the original) up to N messages; the clustering step runs in a fresh process whose
wall time and peak resident memory are printed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.clusters.algorithm import Clustering, cluster_embeddings  # noqa: E402
from app.clusters.titles import key_phrases, title_for  # noqa: E402
from app.nlp.evidence import load_spacy  # noqa: E402
from bench.common import DEFAULT_TWEETS, ROOT, print_table  # noqa: E402

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
    parser.add_argument("--data", type=Path, help="CSV with text,label")
    parser.add_argument("--no-bertopic", action="store_true")
    parser.add_argument("--scale", type=int, default=0, help="synthesise N messages instead")
    parser.add_argument("--tweets", type=Path, default=DEFAULT_TWEETS)
    args = parser.parse_args()
    if args.scale:
        return scale(args.scale, args.tweets)
    if args.data is None:
        parser.error("--data or --scale is required")
    with args.data.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    truth = np.array([r["label"] for r in rows])
    x = embed(texts)
    results = []
    start = time.perf_counter()
    ours = cluster_embeddings(x)
    titles = describe_titles(texts, x, ours)
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
    print("ours, titles of the five largest clusters (true intent of most members):")
    for c, title in enumerate(titles[:5]):
        top = Counter(truth[ours.labels == c].tolist()).most_common(1)[0]
        print(f"  {title!r}: {int(np.sum(ours.labels == c))} queries, {top[1]} of them {top[0]}")
    return 0


def describe_titles(texts: list[str], x: np.ndarray, clustering: Clustering) -> list[str]:
    """Titles as a clustering run makes them: c-TF-IDF over the members nearest each centre."""
    nlp = load_spacy()
    docs = []
    for c in range(clustering.n_clusters):
        rows = np.where(clustering.labels == c)[0]
        nearest = rows[np.argsort(-(x[rows] @ clustering.centroids[c]), kind="stable")][:30]
        docs.append(list(nlp.pipe([texts[i] for i in nearest])))
    phrases = key_phrases(docs, stop_words=nlp.Defaults.stop_words)
    return [title_for(p) for p in phrases]


def scale(n: int, tweets: Path) -> int:
    """Time the clustering step on n synthesised messages in a fresh process."""
    import csv as _csv
    import subprocess

    if not tweets.exists():
        raise SystemExit(f"{tweets} not found: pass --tweets support_tweets/inbound.csv")
    with tweets.open(encoding="utf-8") as f:
        texts = [r["text"].strip() for r in _csv.DictReader(f) if r["text"].strip()]
    base = embed(texts)
    rng = np.random.default_rng(0)
    x = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.01, (n, base.shape[1]))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"scale-{n}.npy"
    np.save(path, x)
    code = (
        "import json, resource, sys, time; import numpy as np; "
        "sys.path.insert(0, sys.argv[2]); "
        "from app.clusters.algorithm import cluster_embeddings; "
        "x = np.load(sys.argv[1]); t = time.perf_counter(); r = cluster_embeddings(x); "
        "print(json.dumps({'seconds': time.perf_counter() - t, 'summary': r.summary(), "
        "'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    s = result["summary"]
    print(f"\n{n} messages ({len(base)} support tweets repeated with perturbed embeddings)")
    print_table(
        [[str(n), f"{result['seconds']:.1f}", f"{result['peak_rss_mib'] / 1024:.2f}",
          str(s["clusters"]), f"{s['outlier_share']:.4f}", json.dumps(s["seconds"])]],
        ["messages", "clustering s", "peak GiB (whole process)", "clusters", "outlier share",
         "stages s"],
    )  # fmt: skip
    path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
