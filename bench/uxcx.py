"""UX/CX labelling: ours next to zero-shot baselines on the held-out split, and its latency.

    python bench/uxcx.py [--tweets ../shared/datasets/support_tweets/inbound.csv]

Accuracy: the fixtures (and labelled tweets, when the dataset is there) that `train-uxcx` held
out (sha256(id) % 5 == 0), scored by
- ours: the trained labeller as the service runs it (models/uxcx/v1);
- zero-shot, labels: cosine similarity to one written description per label (UX, CX, none),
  with the same embedder;
- zero-shot, prototypes: the previous labeller, cosine to short descriptions of each
  sub-category (app/nlp/uxcx.py PROTOTYPES).

Latency, one text at a time and batched, on real support tweets: the shared encoder pass as
the service runs it without a labeller (embedding + sentiment tap), the same pass with what the
labeller reads (pooled layers 4 and 3, token states), and the labeller itself (probabilities,
sub-category, evidence). Added latency = the pass's extra cost + the labeller.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.nlp.base import UXCX_LABELS  # noqa: E402
from app.nlp.loader import load_analyzer  # noqa: E402
from app.nlp.uxcx import LinearUxCx, PrototypeClassifier  # noqa: E402
from bench.common import DEFAULT_TWEETS, ROOT, load_texts, percentiles, print_table  # noqa: E402
from pipelines.metrics import classification_metrics  # noqa: E402
from pipelines.train_uxcx import (  # noqa: E402
    Example,
    load_fixtures,
    load_tweet_labels,
    stable_bucket,
)

# One description per label, from the decision rule (which team fixes the root cause).
LABEL_DESCRIPTIONS = {
    "UX": "a problem with the product itself: a bug, crash, error message, outage, slow "
    "loading, confusing interface, login or sync failure, an update that broke something, "
    "or a missing feature",
    "CX": "a problem with how the company serves the customer: no or slow reply, unhelpful or "
    "rude support, late, missing or damaged order or delivery, billing, refund, pricing, "
    "cancellation, staff behaviour, delays or queues",
    "none": "no problem reported: thanks, praise, chit-chat or a simple question",
}


def scores(y: np.ndarray, pred: list[str]) -> dict[str, float]:
    m = classification_metrics(y, np.array([UXCX_LABELS.index(p) for p in pred]), UXCX_LABELS)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def accuracy_table(analyzer, split: list[Example]) -> list[list[str]]:  # noqa: ANN001
    texts = [e.text for e in split]
    y = np.array([UXCX_LABELS.index(e.label) for e in split])
    ours: LinearUxCx = analyzer.uxcx
    encoding = analyzer.embedder.encode(
        texts, tap_layer=analyzer.sentiment.tap_layer, pool_layers=ours.pool_layers,
        keep_tokens=True,
    )  # fmt: skip
    results = {"ours (models/uxcx/v1)": [u.label for u in ours.classify(texts, encoding)]}
    desc = analyzer.embedder.embed(list(LABEL_DESCRIPTIONS.values()))
    sims = encoding.embeddings @ desc.T
    results["zero-shot, label descriptions"] = [UXCX_LABELS[k] for k in sims.argmax(1)]
    prototypes = PrototypeClassifier(analyzer.embedder)
    results["zero-shot, sub-category prototypes"] = [
        u.label for u in prototypes.classify(texts, encoding)
    ]
    base = scores(y, results["ours (models/uxcx/v1)"])
    rows = []
    for name, pred in results.items():
        s = scores(y, pred)
        rows.append(
            [
                name,
                str(len(split)),
                f"{s['accuracy']:.4f}",
                f"{s['macro_f1']:.4f}",
                f"{base['macro_f1'] - s['macro_f1']:+.4f}" if pred is not None else "",
            ]
        )
    return rows


def latency(analyzer, texts: list[str], batch: int) -> list[list[str]]:  # noqa: ANN001
    ours: LinearUxCx = analyzer.uxcx
    emb, tap = analyzer.embedder, analyzer.sentiment.tap_layer

    def plain(chunk: list[str]) -> object:
        return emb.encode(chunk, tap_layer=tap)

    def with_layers(chunk: list[str]) -> object:
        return emb.encode(chunk, tap_layer=tap, pool_layers=ours.pool_layers, keep_tokens=True)

    for t in texts[:20]:  # warm up
        ours.classify([t], with_layers([t]))
    single: dict[str, list[float]] = {"plain": [], "layers": [], "labeller": [], "head": []}

    def both(chunk: list[str], flip: bool) -> tuple[float, float, object]:
        """Time the two passes, alternating which goes first so neither gets a warmer cache."""
        a = time.perf_counter()
        enc = with_layers(chunk) if flip else plain(chunk)
        b = time.perf_counter()
        other = plain(chunk) if flip else with_layers(chunk)
        c = time.perf_counter()
        if flip:
            return c - b, b - a, enc
        return b - a, c - b, other

    for i, t in enumerate(texts):
        t_plain, t_layers, enc = both([t], i % 2 == 1)
        c = time.perf_counter()
        ours.classify([t], enc)
        d = time.perf_counter()
        ours.probabilities(ours.features(enc))
        e = time.perf_counter()
        single["plain"].append(t_plain)
        single["layers"].append(t_layers)
        single["labeller"].append(d - c)
        single["head"].append(e - d)
    batched: dict[str, float] = {"plain": 0.0, "layers": 0.0, "labeller": 0.0, "head": 0.0}
    for k, s in enumerate(range(0, len(texts), batch)):
        chunk = texts[s : s + batch]
        t_plain, t_layers, enc = both(chunk, k % 2 == 1)
        c = time.perf_counter()
        ours.classify(chunk, enc)
        d = time.perf_counter()
        ours.probabilities(ours.features(enc))
        e = time.perf_counter()
        for key, dt in (
            ("plain", t_plain),
            ("layers", t_layers),
            ("labeller", d - c),
            ("head", e - d),
        ):
            batched[key] += dt
    n = len(texts)
    p = {k: percentiles(v) for k, v in single.items()}
    added_single = np.array(single["layers"]) - np.array(single["plain"])
    added_single += np.array(single["labeller"])
    added_batched = (batched["layers"] - batched["plain"] + batched["labeller"]) / n
    rows = [
        ["encoder pass, no labeller", f"{p['plain']['p50_ms']:.2f}", f"{p['plain']['p99_ms']:.2f}",
         f"{batched['plain'] / n * 1000:.3f}"],
        ["encoder pass + layers the labeller reads", f"{p['layers']['p50_ms']:.2f}",
         f"{p['layers']['p99_ms']:.2f}", f"{batched['layers'] / n * 1000:.3f}"],
        ["labeller: head only", f"{p['head']['p50_ms']:.3f}", f"{p['head']['p99_ms']:.3f}",
         f"{batched['head'] / n * 1000:.3f}"],
        ["labeller: head + sub-category + evidence", f"{p['labeller']['p50_ms']:.3f}",
         f"{p['labeller']['p99_ms']:.3f}", f"{batched['labeller'] / n * 1000:.3f}"],
        ["ADDED per text (pass extra + labeller)",
         f"{np.percentile(added_single, 50) * 1000:.3f}",
         f"{np.percentile(added_single, 99) * 1000:.3f}", f"{added_batched * 1000:.3f}"],
    ]  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", type=Path, default=ROOT / "fixtures" / "uxcx")
    parser.add_argument("--tweets", type=Path, default=DEFAULT_TWEETS)
    parser.add_argument(
        "--tweet-labels",
        type=Path,
        default=ROOT / "fixtures" / "uxcx" / "support_tweets_labels.csv",
    )
    parser.add_argument("--latency-texts", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    analyzer = load_analyzer(Settings(_env_file=None))
    if not isinstance(analyzer.uxcx, LinearUxCx):
        raise SystemExit("set UXCX_BACKEND=linear (the default) to benchmark the trained labeller")
    fixtures = load_fixtures(args.fixtures)
    held_out = [e for e in fixtures if stable_bucket(e.id, 5) == 0]
    tweets, note = load_tweet_labels(args.tweet_labels, args.tweets)
    held_tweets = [e for e in tweets if stable_bucket(e.id, 5) == 0]
    header = ["labeller", "n", "accuracy", "macro-F1", "ours minus it (macro-F1)"]
    print(f"\nHeld-out fixtures (sha256(id) % 5 == 0; never seen by train-uxcx): {len(held_out)}")
    print_table(accuracy_table(analyzer, held_out), header)
    if held_tweets:
        print(f"\nHeld-out labelled support tweets ({note}): {len(held_tweets)}")
        print_table(accuracy_table(analyzer, held_tweets), header)
    texts, source = load_texts(args.tweets, args.latency_texts, seed=1)
    print(f"\nLatency per text, {len(texts)} texts from {source} (ms; batched: batch {args.batch})")
    print_table(
        latency(analyzer, texts, args.batch),
        ["stage", "one text p50", "one text p99", "batched, per text"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
