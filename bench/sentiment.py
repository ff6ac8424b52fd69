"""Sentiment: the analysis branch next to the v1 sentiment branch, VADER, TextBlob and
frozen-embedding logistic regression, on the same texts in the same run, with texts/s.

    python bench/sentiment.py --data ../shared/datasets/tweeteval_sentiment \
        [--datasets ../shared/datasets] [--backends torch,onnx-int8] \
        [--support ../shared/datasets/support_tweets/inbound.csv --sample 30]

Splits: TweetEval val (the analysis branch never trained on it and picked its checkpoint on a
part of train), and the airline tweets of the airlines `train-analysis` holds out whole
(Southwest, Virgin America; the crowd's labels). The branch is scored on every backend asked
for, as the service runs it: the shared encoder pass plus the branch. The logistic-regression
baselines are trained on the frozen embeddings of TweetEval train.csv (cached under
bench/.cache/ between runs).
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
from app.nlp.analysis import AnalysisBranch  # noqa: E402
from app.nlp.base import SENTIMENT_LABELS  # noqa: E402
from app.nlp.embedder import TransformerEmbedder  # noqa: E402
from app.nlp.loader import load_analyzer  # noqa: E402
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


def airline_dev(datasets: Path) -> tuple[list[str], np.ndarray]:
    """The airline tweets held out whole by `train-analysis` (Southwest, Virgin America), with
    the crowd's sentiment."""
    from pipelines.analysis_data import is_dev, read_airline_tweets

    path = datasets / "airline_tweets" / "train.csv"
    if not path.exists():
        return [], np.zeros(0, dtype=np.int64)
    rows = [m for m in read_airline_tweets(datasets) if is_dev(m) and m.sentiment in INDEX]
    return [m.text.strip() for m in rows], np.array([INDEX[m.sentiment] for m in rows])


def score_split(
    name: str,
    texts: list[str],
    y: np.ndarray,
    scorers: dict[str, tuple[TransformerEmbedder, object]],
    baselines: dict[str, Callable[[list[str]], np.ndarray]],
) -> None:
    """One split: every scorer and baseline on the same texts, with texts/s."""
    n = len(texts)
    results: dict[str, tuple[np.ndarray, float]] = {}
    reference_rate = 0.0
    for label, (embedder, scorer) in scorers.items():
        tap = getattr(scorer, "tap_layer", None)
        embedder.encode(texts[:64], tap_layer=tap)  # warm-up
        start = time.perf_counter()
        encoding = embedder.encode(texts, tap_layer=tap)
        scored = scorer.score(texts, encoding)  # type: ignore[attr-defined]
        rate = n / (time.perf_counter() - start)
        reference_rate = reference_rate or rate
        results[f"{label}, service label"] = (np.array([INDEX[s.label] for s in scored]), rate)
        whole = [max(s.probabilities, key=s.probabilities.__getitem__) for s in scored]
        results[f"{label}, whole text"] = (np.array([INDEX[w] for w in whole]), rate)
    for label, fn in baselines.items():
        start = time.perf_counter()
        pred = fn(texts)
        results[label] = (pred, n / (time.perf_counter() - start))
    rows = []
    for label, (pred, rate) in results.items():
        m = classification_metrics(y, pred, SENTIMENT_LABELS)
        rows.append(
            [label, f"{m['macro_recall']:.4f}", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}",
             f"{rate:.0f}", str(m["confusion"]["matrix"])]
        )  # fmt: skip
    print(f"\n{name}: {n} tweets\n")
    print_table(rows, ["method", "macro-recall", "accuracy", "macro-F1", "texts/s",
                       "confusion (rows true neg, neu, pos)"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with train.csv, val.csv")
    parser.add_argument(
        "--datasets", type=Path, default=ROOT.parent / "shared" / "datasets",
        help="the real datasets (airline_tweets: the held-out airlines)",
    )  # fmt: skip
    parser.add_argument("--backends", default="torch,onnx-int8", help="of the analysis branch")
    parser.add_argument("--support", type=Path, default=None, help="support tweets CSV")
    parser.add_argument("--sample", type=int, default=30, help="support tweets to show")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    val_texts, val_y = read_split(args.data / "val.csv")
    train_texts, train_y = read_split(args.data / "train.csv")
    settings = Settings(_env_file=None)
    embedder = TransformerEmbedder(max_tokens=settings.embedder_max_tokens)
    branch = AnalysisBranch(settings.analysis_artifact, embedder)
    scorers: dict[str, tuple[TransformerEmbedder, object]] = {
        "analysis branch (torch fp32)": (embedder, branch)
    }
    for backend in [b for b in args.backends.split(",") if b and b != "torch"]:
        analyzer = load_analyzer(
            Settings(_env_file=None, encoder_backend=backend, sentiment_backend="analysis",
                     uxcx_backend="analysis")
        )  # fmt: skip
        scorers[f"analysis branch ({backend})"] = (analyzer.embedder, analyzer.sentiment)
    if (settings.sentiment_artifact / "branch.safetensors").exists():
        scorers["v1 sentiment branch (torch)"] = (
            embedder, BranchSentiment(settings.sentiment_artifact, embedder)
        )  # fmt: skip

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_emb = train_embeddings(embedder, train_texts, args.data / "train.csv")
    lr = LogisticRegression(max_iter=3000, class_weight="balanced").fit(train_emb, train_y)
    scaler = StandardScaler().fit(vader_features(train_texts))
    train_aug = np.hstack([train_emb, scaler.transform(vader_features(train_texts))])
    lr_v = LogisticRegression(max_iter=3000, class_weight="balanced").fit(train_aug, train_y)
    baselines: dict[str, Callable[[list[str]], np.ndarray]] = {
        "VADER": lambda t: np.array([INDEX[x] for x in vader_labels(t)]),
        "TextBlob": lambda t: np.array([INDEX[x] for x in textblob_labels(t)]),
        "frozen MiniLM + logistic regression": lambda t: lr.predict(embedder.embed(t)),
        "frozen MiniLM + VADER + logistic regression": lambda t: lr_v.predict(
            np.hstack([embedder.embed(t), scaler.transform(vader_features(t))])
        ),
    }
    score_split(f"TweetEval sentiment val ({args.data}; never trained on, never used to select)",
                val_texts, val_y, scorers, baselines)  # fmt: skip
    air_texts, air_y = airline_dev(args.datasets)
    if air_texts:
        score_split("Airline tweets held out whole (Southwest, Virgin America; crowd labels)",
                    air_texts, air_y, scorers, baselines)  # fmt: skip
    start = time.perf_counter()
    embedder.encode(val_texts)
    encoder_rate = len(val_texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    encoding = embedder.encode(val_texts, tap_layer=branch.tap_layer)
    branch.score(val_texts, encoding)
    branch.classify(val_texts, encoding)
    both_rate = len(val_texts) / (time.perf_counter() - start)
    print(
        f"\nanalysis cost (torch): encoder pass alone {encoder_rate:.0f} texts/s, encoder pass "
        f"+ analysis branch (sentiment and UX/CX) {both_rate:.0f} texts/s = "
        f"{encoder_rate / both_rate:.2f}x one encoder pass"
    )

    if args.support and args.support.exists():
        with args.support.open(encoding="utf-8") as f:
            tweets = [r["text"].strip() for r in csv.DictReader(f) if r.get("text", "").strip()]
        sample = random.Random(args.seed).sample(tweets, args.sample)
        enc = embedder.encode(sample, tap_layer=branch.tap_layer)
        print(f"\n{args.sample} support tweets drawn with seed {args.seed} from {args.support}\n")
        for i, (text, s) in enumerate(zip(sample, branch.score(sample, enc), strict=True), 1):
            flat = " ".join(text.split())
            print(f"{i:2d}. [{s.label:8s} {s.score:+.2f}] {flat[:150]}")


if __name__ == "__main__":
    main()
