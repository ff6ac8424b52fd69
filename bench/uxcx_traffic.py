"""The UX/CX labeller on real, unlabelled support traffic: label mix per brand, and a seeded
random sample of messages with label, sub-category and evidence to read and judge by hand.

    python bench/uxcx_traffic.py --data ../shared/datasets/support_tweets/inbound.csv \
        [--brands 20 --sample 20 --seed 7] [--dev-only] \
        [--banking ../shared/datasets/banking77/train.csv]

The sample leaves out every tweet labelled under fixtures/uxcx/ (training and dev data). With
`--dev-only` it draws only tweets of the dev split's brands, authors and conversations, which no
training saw; `--banking` adds as many Banking77 customer queries (a source nobody labelled).
Nothing here is stored; text is printed, never written to the project.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.config import Settings  # noqa: E402
from app.nlp.loader import load_analyzer  # noqa: E402
from bench.common import DEFAULT_TWEETS, ROOT, print_table  # noqa: E402
from pipelines.analysis_data import is_dev, read_real_labels, read_real_messages  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_TWEETS)
    parser.add_argument("--brands", type=int, default=20, help="brands with most tweets shown")
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dev-only", action="store_true", help="sample the dev split's tweets")
    parser.add_argument("--banking", type=Path, default=None, help="banking77 CSV to sample too")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: pass --data support_tweets/inbound.csv")
    labelled_path = ROOT / "fixtures" / "uxcx" / "support_tweets_labels.csv"
    with labelled_path.open(encoding="utf-8") as f:
        labelled = {row["tweet_id"] for row in csv.DictReader(f)}
    real = ROOT / "fixtures" / "uxcx" / "real_labels.csv"
    if real.exists():
        labelled |= {k.split(":", 1)[1] for k in read_real_labels(real) if k.startswith("support")}
    dev_ids: set[str] | None = None
    if args.dev_only:
        messages = read_real_messages(args.data.parent.parent)
        dev_ids = {m.id for m in messages.values() if m.source == "support_tweets" and is_dev(m)}
    with args.data.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["text"].strip()]
    analyzer = load_analyzer(Settings(_env_file=None))
    results = []
    for s in range(0, len(rows), 256):
        results += analyzer.analyze([r["text"].strip() for r in rows[s : s + 256]])
    per_brand: dict[str, Counter[str]] = defaultdict(Counter)
    for r, a in zip(rows, results, strict=True):
        label = a.uxcx.label if a.uxcx else "not English"
        per_brand[r["company"] or "(unknown)"][label] += 1
        per_brand["ALL"][label] += 1
    brands = sorted(per_brand, key=lambda b: -sum(per_brand[b].values()))[: args.brands + 1]
    table = []
    for b in brands:
        c = per_brand[b]
        n = sum(c.values())
        table.append(
            [b, str(n)] + [f"{100 * c[k] / n:.0f}%" for k in ("UX", "CX", "none", "not English")]
        )
    print_table(table, ["brand", "tweets", "UX", "CX", "none", "not English"])
    candidates = [
        (r, a) for r, a in zip(rows, results, strict=True)
        if r["tweet_id"] not in labelled and a.uxcx is not None
        and (dev_ids is None or r["tweet_id"] in dev_ids)
    ]  # fmt: skip
    random.Random(args.seed).shuffle(candidates)
    print(f"\n{args.sample} random unlabelled English tweets (seed {args.seed}):")
    for r, a in candidates[: args.sample]:
        u = a.uxcx
        assert u is not None
        evidence = ", ".join(f"'{e.text}'" for e in u.evidence)
        text = " ".join(r["text"].split())
        print(f"- [{r['tweet_id']} {r['company']}] {u.label}/{u.subcategory} "
              f"p={u.probability:.2f} evidence: {evidence}\n    {text}")  # fmt: skip
    if args.banking and args.banking.exists():
        with args.banking.open(encoding="utf-8") as f:
            queries = [r["text"].strip() for r in csv.DictReader(f) if r["text"].strip()]
        drawn = random.Random(args.seed).sample(queries, args.sample)
        print(f"\n{args.sample} random Banking77 queries from {args.banking} (seed {args.seed}):")
        for text, a in zip(drawn, analyzer.analyze(drawn), strict=True):
            u = a.uxcx
            if u is None:
                print(f"- (not English) {text}")
                continue
            evidence = ", ".join(f"'{e.text}'" for e in u.evidence)
            print(f"- {u.label}/{u.subcategory} p={u.probability:.2f} evidence: {evidence}\n"
                  f"    {' '.join(text.split())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
