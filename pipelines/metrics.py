"""Classification metrics, computed the same way by training jobs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Macro-recall (TweetEval's metric), accuracy, macro-F1, per-class precision, recall and
    F1, and the confusion matrix (rows: true label, columns: predicted, in `labels` order)."""
    recalls, precisions, f1s = [], [], []
    for k in range(len(labels)):
        truth, pred = y_true == k, y_pred == k
        tp = float(np.sum(truth & pred))
        recall = tp / truth.sum() if truth.any() else 0.0
        precision = tp / pred.sum() if pred.any() else 0.0
        recalls.append(recall)
        precisions.append(precision)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)

    def per_class(values: list[float]) -> dict[str, float]:
        return {label: round(float(v), 4) for label, v in zip(labels, values, strict=True)}

    return {
        "macro_recall": float(np.mean(recalls)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(np.mean(f1s)),
        "recall": per_class(recalls),
        "precision": per_class(precisions),
        "f1": per_class(f1s),
        "support": {lab: int(n) for lab, n in zip(labels, confusion.sum(1), strict=True)},
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
    }
