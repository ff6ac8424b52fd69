"""One pass over a batch of texts: language, one embedding each, sentiment and UX/CX."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.nlp.base import Language, Sentiment, SentimentScorer, UxCx, UxCxClassifier
from app.nlp.embedder import TransformerEmbedder
from app.nlp.language import LanguageDetector


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the analysers say about one text."""

    language: Language
    embedding: np.ndarray
    sentiment: Sentiment | None  # None when the language is not one the analysers know
    uxcx: UxCx | None


def compose_text(subject: str | None, body: str) -> str:
    """The text the analysers see: subject and body, as one message."""
    body = body.strip()
    subject = (subject or "").strip()
    if subject and not body.lower().startswith(subject.lower()):
        return f"{subject}\n{body}"
    return body


class Analyzer:
    """Runs the encoder once per text and feeds every analyser that can use the embedding."""

    def __init__(
        self,
        *,
        embedder: TransformerEmbedder,
        sentiment: SentimentScorer,
        uxcx: UxCxClassifier,
        language: LanguageDetector,
    ) -> None:
        self.embedder = embedder
        self.sentiment = sentiment
        self.uxcx = uxcx
        self.language = language
        # The trained branches among the analysers (one object may be both), each run once
        # per batch beside the encoder; they must all start from the same encoder layer.
        branches: dict[str, Any] = {}
        for analyser in (sentiment, uxcx):
            key = getattr(analyser, "state_key", None)
            if key is not None and hasattr(analyser, "tap_states"):
                branches[key] = analyser.tap_states
        taps = {
            layer
            for layer in (getattr(sentiment, "tap_layer", None), getattr(uxcx, "tap_layer", None))
            if layer is not None
        }
        if len(taps) > 1:
            raise ValueError(
                f"sentiment ({sentiment.name}) and UX/CX ({uxcx.name}) branches start from "
                f"different encoder layers {sorted(taps)}; pick analysers that share one"
            )
        self.tap_layer: int | None = taps.pop() if taps else None
        self._branches = branches

    @property
    def versions(self) -> dict[str, str]:
        """Names of the analysers in use, stored beside each analysis."""
        return {
            "embedder": self.embedder.name,
            "sentiment": self.sentiment.name,
            "uxcx": self.uxcx.name,
        }

    def analyze(self, texts: Sequence[str]) -> list[Analysis]:
        """Analyse a batch; texts in a language the models don't know get no labels."""
        if not texts:
            return []
        languages = [self.language.detect(t) for t in texts]
        encoding = self.embedder.encode(
            texts,
            tap_layer=self.tap_layer,
            pool_layers=self.uxcx.pool_layers,
            keep_tokens=self.uxcx.needs_tokens,
            # The trained branches' layers run right after the encoder's, per batch.
            tap_states=self._branches,
        )
        embeddings = encoding.embeddings
        keep = [i for i, lang in enumerate(languages) if lang.supported]
        sentiments: dict[int, Sentiment] = {}
        labels: dict[int, UxCx] = {}
        if keep:
            # The branch scorer reads the whole batch's hidden states; scoring a few texts
            # that are then dropped costs less than a second, filtered pass.
            scored = self.sentiment.score(texts, encoding)
            sentiments = {i: scored[i] for i in keep}
            labels = dict(zip(keep, self.uxcx.classify(texts, encoding, keep), strict=True))
        return [
            Analysis(
                language=languages[i],
                embedding=embeddings[i],
                sentiment=sentiments.get(i),
                uxcx=labels.get(i),
            )
            for i in range(len(texts))
        ]
