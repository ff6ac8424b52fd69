"""Sentiment on TweetEval val: ours next to VADER, TextBlob and frozen-embedding logistic
regression, on the same texts in the same run, with texts/s for each.

    python bench/sentiment.py --data ../shared/datasets/tweeteval_sentiment \
        [--support ../shared/datasets/support_tweets/inbound.csv --sample 30]

Ours is timed as the service runs it: the shared encoder pass (which also yields the embedding
for clustering) plus the sentiment branch. The logistic-regression baselines are trained on the
frozen embeddings of train.csv (cached under bench/.cache/ between runs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.nlp.base import SENTIMENT_LABELS  # noqa: E402
from app.nlp.embedder import TransformerEmbedder  # noqa: E402
from app.nlp.sentiment import BranchSentiment  # noqa: E402
from bench.common import ROOT, print_table  # noqa: E402
from pipelines.metrics import classification_metrics  # noqa: E402
from pipelines.train_sentiment import read_split  # noqa: E402

INDEX = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
CACHE = ROOT / "bench" / ".cache"


def timed(fn: Callable[[], list[str]], n: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    labels = fn()
    rate = n / (time.perf_counter() - start)
    return np.array([INDEX[label] for label in labels]), rate


def vader_features(texts: list[str]) -> np.ndarray:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    return np.array(
        [[s["neg"], s["neu"], s["pos"], s["compound"]] for s in map(vader.polarity_scores, texts)],
        dtype=np.float32,
    )


def vader_labels(texts: list[str]) -> list[str]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    out = []
    for t in texts:
        c = vader.polarity_scores(t)["compound"]
        out.append("positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral")
    return out


def textblob_labels(texts: list[str]) -> list[str]:
    from textblob import TextBlob

    out = []
    for t in texts:
        p = TextBlob(t).sentiment.polarity
        out.append("positive" if p > 0 else "negative" if p < 0 else "neutral")
    return out


def train_embeddings(embedder: TransformerEmbedder, texts: list[str], path: Path) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cached = CACHE / f"train-embeddings-{key}.npy"
    if cached.exists():
        return np.load(cached)
    print(f"embedding {len(texts)} training texts for the logistic-regression baselines ...")
    emb = embedder.embed(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cached, emb)
    return emb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv, val.csv")
    parser.add_argument("--support", type=Path, default=None, help="support tweets CSV")
    parser.add_argument("--sample", type=int, default=30, help="support tweets to show")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    val_texts, val_y = read_split(args.data / "val.csv")
    train_texts, train_y = read_split(args.data / "train.csv")
    settings = Settings(_env_file=None)
    embedder = TransformerEmbedder(max_tokens=settings.embedder_max_tokens)
    ours = BranchSentiment(settings.sentiment_artifact, embedder)
    n = len(val_texts)
    embedder.encode(val_texts[:64], tap_layer=ours.tap_layer)  # warm-up

    results: dict[str, tuple[np.ndarray, float]] = {}
    start = time.perf_counter()
    embedder.encode(val_texts)
    encoder_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    encoding = embedder.encode(val_texts, tap_layer=ours.tap_layer)
    scored = ours.score(val_texts, encoding)
    ours_rate = n / (time.perf_counter() - start)
    results["ours (service label)"] = (np.array([INDEX[s.label] for s in scored]), ours_rate)
    whole = [max(s.probabilities or {}, key=(s.probabilities or {}).__getitem__) for s in scored]
    results["ours (whole-text label)"] = (np.array([INDEX[w] for w in whole]), ours_rate)

    results["VADER"] = timed(lambda: vader_labels(val_texts), n)
    results["TextBlob"] = timed(lambda: textblob_labels(val_texts), n)

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_emb = train_embeddings(embedder, train_texts, args.data / "train.csv")
    lr = LogisticRegression(max_iter=3000, class_weight="balanced").fit(train_emb, train_y)
    start = time.perf_counter()
    val_emb = embedder.embed(val_texts)
    pred = lr.predict(val_emb)
    results["frozen MiniLM + logistic regression"] = (pred, n / (time.perf_counter() - start))

    scaler = StandardScaler().fit(vader_features(train_texts))
    train_aug = np.hstack([train_emb, scaler.transform(vader_features(train_texts))])
    lr_v = LogisticRegression(max_iter=3000, class_weight="balanced").fit(train_aug, train_y)
    start = time.perf_counter()
    val_aug = np.hstack([embedder.embed(val_texts), scaler.transform(vader_features(val_texts))])
    pred = lr_v.predict(val_aug)
    results["frozen MiniLM + VADER + logistic regression"] = (
        pred,
        n / (time.perf_counter() - start),
    )

    rows = []
    for name, (pred, rate) in results.items():
        m = classification_metrics(val_y, pred, SENTIMENT_LABELS)
        rows.append(
            [
                name,
                f"{m['macro_recall']:.4f}",
                f"{m['accuracy']:.4f}",
                f"{m['macro_f1']:.4f}",
                f"{rate:.0f}",
                f"{rate / ours_rate:.2f}x",
            ]
        )
    print(f"\nTweetEval sentiment val: {n} tweets ({args.data})\n")
    print_table(
        rows, ["method", "macro-recall", "accuracy", "macro-F1", "texts/s", "speed vs ours"]
    )
    print(
        f"\nanalysis cost: encoder pass alone {encoder_rate:.0f} texts/s, encoder pass + "
        f"sentiment {ours_rate:.0f} texts/s = {encoder_rate / ours_rate:.2f}x one encoder pass"
    )

    if args.support and args.support.exists():
        with args.support.open(encoding="utf-8") as f:
            tweets = [r["text"].strip() for r in csv.DictReader(f) if r.get("text", "").strip()]
        sample = random.Random(args.seed).sample(tweets, args.sample)
        enc = embedder.encode(sample, tap_layer=ours.tap_layer)
        print(f"\n{args.sample} support tweets drawn with seed {args.seed} from {args.support}\n")
        for i, (text, s) in enumerate(zip(sample, ours.score(sample, enc), strict=True), 1):
            flat = " ".join(text.split())
            print(f"{i:2d}. [{s.label:8s} {s.score:+.2f}] {flat[:150]}")


if __name__ == "__main__":
    main()
