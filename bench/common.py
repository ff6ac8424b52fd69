"""Helpers shared by the benchmarks: real texts, percentiles, a table printer."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TWEETS = ROOT.parent / "shared" / "datasets" / "support_tweets" / "inbound.csv"
FIXTURE_TICKETS = ROOT / "fixtures" / "tickets" / "sample.jsonl"


def load_texts(path: Path | None, n: int, *, seed: int = 0) -> tuple[list[str], str]:
    """`n` texts drawn (seeded) from a CSV with a `text` column, or cycled from the fixtures."""
    if path is not None and path.exists():
        with path.open(encoding="utf-8") as f:
            texts = [
                row["text"].strip() for row in csv.DictReader(f) if row.get("text", "").strip()
            ]
        rng = random.Random(seed)
        rng.shuffle(texts)
        while len(texts) < n:
            texts += texts
        return texts[:n], str(path)
    lines = FIXTURE_TICKETS.read_text(encoding="utf-8").splitlines()
    base = [json.loads(line)["body"] for line in lines if line]
    out = [f"{base[i % len(base)]} (#{i})" for i in range(n)]
    return out, f"{FIXTURE_TICKETS} (cycled; pass --data for real traffic)"


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds."""
    arr = np.asarray(samples_s) * 1000
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
    }


def print_table(rows: list[list[str]], header: list[str]) -> None:
    """A plain aligned table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
