"""Sentiment scorers, picked by name from settings."""

from __future__ import annotations

from collections.abc import Sequence

from app.nlp.base import Embeddings, Sentiment

# VADER's own recommended cut-offs on the compound score.
_VADER_THRESHOLD = 0.05


class VaderScorer:
    """VADER's lexicon and rules: the compound score is the sentiment score in [-1, 1]."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str], embeddings: Embeddings) -> list[Sentiment]:
        """Score each text; the embeddings are not used by a lexicon."""
        results = []
        for text in texts:
            polarity = self._vader.polarity_scores(text)
            compound = float(polarity["compound"])
            if compound >= _VADER_THRESHOLD:
                label = "positive"
            elif compound <= -_VADER_THRESHOLD:
                label = "negative"
            else:
                label = "neutral"
            probs = {
                "negative": float(polarity["neg"]),
                "neutral": float(polarity["neu"]),
                "positive": float(polarity["pos"]),
            }
            results.append(Sentiment(label=label, score=compound, probabilities=probs))
        return results


def load_sentiment_scorer(backend: str) -> VaderScorer:
    """The scorer named by the SENTIMENT_BACKEND setting."""
    if backend == "vader":
        return VaderScorer()
    raise ValueError(f"unknown SENTIMENT_BACKEND {backend!r}; available: vader")
