"""UX/CX on real text: the analysis branch next to the v1 labeller and zero-shot baselines.

    python bench/uxcx.py [--datasets ../shared/datasets] [--backends torch,onnx-int8]

Texts: the real-text dev split of `python -m pipelines train-analysis` (messages of held-out
brands, airlines, authors and conversations that two readings labelled the same; never trained
on, never used to select), then the written fixtures' held-out split. Each is scored in one
run by
- the analysis branch (`models/analysis/v1`) on every backend asked for (PyTorch fp32, and the
  committed ONNX int8 graphs: the export must lose no more than 0.5 points against fp32;
  the line under each table gives every difference, its largest change and largest drop);
- today's v1 labeller (`models/uxcx/v1`, linear on the frozen embedding);
- zero-shot: cosine to one written description per label; and cosine to the short
  per-sub-category descriptions of the first labeller (`UXCX_BACKEND=prototypes`).

Numbers: problem macro-F1 (UX or CX against none), UX/CX/none macro-F1, UX-vs-CX accuracy
among real problems (the likelier of UX and CX), sub-category accuracy (label and
sub-category both right, over all messages), the confusion matrices, and the branch's added
latency per text (heads, sub-category and evidence, after the shared pass).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.nlp.analysis import CLASSES, AnalysisBranch  # noqa: E402
from app.nlp.base import UXCX_LABELS, UxCx  # noqa: E402
from app.nlp.embedder import TransformerEmbedder  # noqa: E402
from app.nlp.loader import load_analyzer  # noqa: E402
from app.nlp.uxcx import LinearUxCx, PrototypeClassifier  # noqa: E402
from bench.common import ROOT, percentiles, print_table  # noqa: E402
from pipelines.train_analysis import Example, TrainConfig, build_data, uxcx_metrics  # noqa: E402

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
HEADER = ["labeller", "n", "problem macro-F1", "UX/CX/none macro-F1", "UX vs CX (problems)",
          "sub-category acc.", "accuracy"]  # fmt: skip


def _as_uxcx(probs: np.ndarray, subcategories: list[str] | None = None) -> list[UxCx]:
    """Predictions of a zero-shot baseline as UxCx (argmax label)."""
    out = []
    for i, row in enumerate(probs):
        k = int(row.argmax())
        out.append(
            UxCx(
                label=UXCX_LABELS[k],
                probability=float(row[k]),
                probabilities={lab: float(p) for lab, p in zip(UXCX_LABELS, row, strict=True)},
                subcategory=subcategories[i] if subcategories else None,
            )
        )
    return out


def labellers(
    texts: list[str], embedder: TransformerEmbedder, extra: dict[str, Any], settings: Settings
) -> dict[str, list[UxCx]]:
    """Every labeller's predictions for `texts` (the branch on each backend in `extra`)."""
    v1 = LinearUxCx(settings.uxcx_artifact)
    branch = AnalysisBranch(settings.analysis_artifact, embedder)
    encoding = embedder.encode(
        texts, tap_layer=branch.tap_layer, pool_layers=v1.pool_layers, keep_tokens=True
    )
    out: dict[str, list[UxCx]] = {"analysis branch (torch fp32)": branch.classify(texts, encoding)}
    for name, analyzer in extra.items():
        enc = analyzer.embedder.encode(texts, tap_layer=analyzer.tap_layer)
        out[f"analysis branch ({name})"] = analyzer.uxcx.classify(texts, enc)
    out["v1 labeller (models/uxcx/v1)"] = v1.classify(texts, encoding)
    desc = embedder.embed(list(LABEL_DESCRIPTIONS.values()))
    sims = encoding.embeddings @ desc.T
    out["zero-shot, label descriptions"] = _as_uxcx(np.eye(3)[sims.argmax(1)])
    out["zero-shot, sub-category prototypes"] = PrototypeClassifier(embedder).classify(
        texts, encoding
    )
    return out


def report(name: str, split: list[Example], predictions: dict[str, list[UxCx]]) -> dict[str, Any]:
    """Print one split's table and confusion matrices; return the metrics."""
    truth = [e.label for e in split]
    truth_sub = [CLASSES[e.subcategory][1] if e.subcategory >= 0 else "" for e in split]
    metrics = {k: uxcx_metrics(truth, truth_sub, v) for k, v in predictions.items()}
    rows = []
    for labeller, m in metrics.items():
        rows.append(
            [labeller, str(m["n"]), f"{m['problem']['macro_f1']:.4f}",
             f"{m['label']['macro_f1']:.4f}", f"{m['uxcx_among_problems']['accuracy']:.4f}",
             f"{m['subcategory']['accuracy']:.4f}", f"{m['label']['accuracy']:.4f}"]
        )  # fmt: skip
    print(f"\n{name}: {len(split)} messages")
    print_table(rows, HEADER)
    fp32 = metrics.get("analysis branch (torch fp32)")
    for labeller, m in metrics.items():
        if labeller.startswith("analysis branch (") and m is not fp32 and fp32 is not None:
            diffs = {
                "problem": m["problem"]["macro_f1"] - fp32["problem"]["macro_f1"],
                "3-way": m["label"]["macro_f1"] - fp32["label"]["macro_f1"],
                "UX vs CX": m["uxcx_among_problems"]["accuracy"]
                - fp32["uxcx_among_problems"]["accuracy"],
                "sub-category": m["subcategory"]["accuracy"] - fp32["subcategory"]["accuracy"],
            }
            largest = max(abs(v) for v in diffs.values())
            drop = max(0.0, -min(diffs.values()))
            held = "held" if drop <= 0.005 else "NOT held"
            print(
                f"{labeller} minus fp32, points: "
                + ", ".join(f"{k} {v * 100:+.2f}" for k, v in diffs.items())
                + f" (largest change {largest * 100:.2f}, largest drop {drop * 100:.2f}; "
                f"{'every change within 0.5' if largest <= 0.005 else 'a change over 0.5'}, "
                f"quality {held})"
            )
    print("\nconfusion (rows true UX, CX, none; columns predicted)")
    for labeller, m in metrics.items():
        print(f"  {labeller}: {m['label']['confusion']['matrix']}")
    return metrics


def latency(branch: AnalysisBranch, embedder: TransformerEmbedder, texts: list[str]) -> None:
    """The branch's own cost per text after the shared pass: heads, sub-category, evidence."""
    for t in texts[:20]:
        branch.classify([t], embedder.encode([t], tap_layer=branch.tap_layer))
    heads, full = [], []
    for t in texts:
        enc = embedder.encode([t], tap_layer=branch.tap_layer)
        branch.pooled(enc, 1)  # the branch states, shared with sentiment
        a = time.perf_counter()
        branch.heads.probabilities(branch.heads.logits(branch.pooled(enc, 1)))
        b = time.perf_counter()
        branch.classify([t], enc)
        c = time.perf_counter()
        heads.append(b - a)
        full.append(c - b)
    rows = [
        ["heads only", f"{percentiles(heads)['p50_ms']:.3f}",
         f"{percentiles(heads)['p99_ms']:.3f}"],
        ["heads + sub-category + evidence", f"{percentiles(full)['p50_ms']:.3f}",
         f"{percentiles(full)['p99_ms']:.3f}"],
    ]  # fmt: skip
    print(f"\nUX/CX latency after the shared pass, {len(texts)} dev texts one at a time (ms)")
    print_table(rows, ["stage", "p50", "p99"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--fixtures", type=Path, default=ROOT / "fixtures" / "uxcx")
    parser.add_argument(
        "--labels", type=Path, default=ROOT / "fixtures" / "uxcx" / "real_labels.csv"
    )
    parser.add_argument(
        "--second-reading", type=Path, default=ROOT / "fixtures" / "uxcx" / "real_agreement.csv"
    )
    parser.add_argument(
        "--backends", default="torch,onnx-int8", help="backends of the analysis branch to score"
    )
    parser.add_argument("--latency-texts", type=int, default=300)
    args = parser.parse_args()

    settings = Settings(_env_file=None)
    examples, notes = build_data(
        datasets=args.datasets, fixtures=args.fixtures, real_labels=args.labels,
        v1_labels=None, second_reading=args.second_reading, overrides=[], config=TrainConfig(),
    )  # fmt: skip
    embedder = TransformerEmbedder(max_tokens=settings.embedder_max_tokens)
    extra = {}
    for backend in [b for b in args.backends.split(",") if b and b != "torch"]:
        extra[backend] = load_analyzer(
            Settings(_env_file=None, encoder_backend=backend, sentiment_backend="analysis",
                     uxcx_backend="analysis")
        )  # fmt: skip
    print(f"data: {notes.get('datasets')}; dev readings: {notes.get('dev_readings')}")
    dev = [e for e in examples if e.split == "dev" and e.origin == "real"]
    fixtures = [e for e in examples if e.split == "fixtures_test"]
    for name, split in (
        ("Real-text dev split (held-out brands, airlines, authors; two readings agree)", dev),
        ("Written fixtures, held-out split (sha256(id) % 5 == 0)", fixtures),
    ):
        if split:
            report(name, split, labellers([e.text for e in split], embedder, extra, settings))
    clear = [e for e in dev if e.clarity == "clear"]
    if clear and len(clear) < len(dev):
        report("Dev split, messages both readers found clear", clear,
               labellers([e.text for e in clear], embedder, extra, settings))  # fmt: skip
    if dev and args.latency_texts:
        branch = AnalysisBranch(settings.analysis_artifact, embedder)
        latency(branch, embedder, [e.text for e in dev][: args.latency_texts])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
