"""The small interfaces every analyser implements, and the results they return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Embeddings = npt.NDArray[np.float32]

UXCX_LABELS = ("UX", "CX", "none")

# The sub-categories each label has; the training data and the routing table use these keys.
SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "UX": (
        "bug",
        "outage",
        "performance",
        "usability",
        "account_access",
        "compatibility",
        "feature_request",
    ),
    "CX": (
        "support_responsiveness",
        "support_quality",
        "delivery",
        "billing",
        "cancellation",
        "staff",
        "travel_disruption",
    ),
    "none": ("praise", "thanks", "question", "chit_chat"),
}


class UxCxLabel(StrEnum):
    """Who fixes the root cause: product (UX), service (CX), or nobody (none)."""

    UX = "UX"
    CX = "CX"
    none = "none"


SENTIMENT_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True, slots=True)
class SentenceSentiment:
    """Sentiment of one sentence, located by its character span in the text."""

    start: int
    end: int
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Sentiment:
    """Sentiment of one text: a label, a score in [-1, 1], and its most negative sentence."""

    label: str
    score: float
    probabilities: dict[str, float] | None = None
    most_negative: SentenceSentiment | None = None  # only for texts of several sentences


@dataclass(frozen=True, slots=True)
class Evidence:
    """A word or phrase of the text that drove a decision, by character span.

    `weight` is its share of what pushed the decision towards the chosen label (0..1).
    """

    text: str
    start: int
    end: int
    weight: float


@dataclass(frozen=True, slots=True)
class UxCx:
    """UX / CX / none for one text, with a probability per label and per sub-category."""

    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)
    subcategory: str | None = None
    subcategory_probability: float | None = None
    evidence: tuple[Evidence, ...] = ()
    # P(the message reports a problem), from a labeller that decides that on its own.
    problem_probability: float | None = None


@dataclass(frozen=True, slots=True)
class Language:
    """The detected language of a text and whether the English analysers may judge it."""

    code: str
    confidence: float
    supported: bool


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one encoder pass per text."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed `texts` into an (n, dim) float32 array."""
        ...


class SentimentScorer(Protocol):
    """Scores the sentiment of texts; may use the shared encoder pass (`Encoding`)."""

    name: str
    # The encoder layer whose hidden states the scorer reads; None when it needs none.
    tap_layer: int | None

    def score(self, texts: Sequence[str], encoding: Any) -> list[Sentiment]:
        """One Sentiment per text."""
        ...


class UxCxClassifier(Protocol):
    """Labels texts UX, CX or none from the shared encoder pass (`Encoding`)."""

    name: str
    # Intermediate encoder layers it reads, mean-pooled like the embedding (`Encoding.pooled`).
    pool_layers: tuple[int, ...]
    # Whether `classify` reads the token states of those layers (to explain its decisions).
    needs_tokens: bool

    def classify(
        self, texts: Sequence[str], encoding: Any, select: Sequence[int] | None = None
    ) -> list[UxCx]:
        """One UxCx per text of `encoding` (or per index in `select`), in that order."""
        ...
