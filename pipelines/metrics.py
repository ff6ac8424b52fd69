"""Classification metrics, computed the same way by training jobs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Macro-recall (TweetEval's metric), accuracy, macro-F1 and per-class recall."""
    recalls, f1s = [], []
    for k in range(len(labels)):
        truth, pred = y_true == k, y_pred == k
        tp = float(np.sum(truth & pred))
        recall = tp / truth.sum() if truth.any() else 0.0
        precision = tp / pred.sum() if pred.any() else 0.0
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {
        "macro_recall": float(np.mean(recalls)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(np.mean(f1s)),
        "recall": {label: round(float(r), 4) for label, r in zip(labels, recalls, strict=True)},
    }
