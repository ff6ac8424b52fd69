"""One pass over a batch of texts: language, one embedding each, sentiment and UX/CX."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
            tap_layer=self.sentiment.tap_layer,
            pool_layers=self.uxcx.pool_layers,
            keep_tokens=self.uxcx.needs_tokens,
            # The branch sentiment scorer's layers run right after the encoder's, per batch.
            tap_states=getattr(self.sentiment, "tap_states", None),
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
