"""API shapes for reading tickets and their analysis."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class SentencePublic(BaseModel):
    """One sentence of the analysed text (subject and body) with its own sentiment."""

    text: str
    start: int
    end: int
    label: str
    score: float


class SentimentPublic(BaseModel):
    """Sentiment label and score in [-1, 1] (P(positive) - P(negative)).

    For a text of several sentences, `most_negative_sentence` is the lowest-scoring one; when it
    is negative the whole message is labelled negative.
    """

    label: str
    score: float
    probabilities: dict[str, float] | None = None
    most_negative_sentence: SentencePublic | None = None

    @classmethod
    def build(
        cls,
        *,
        label: str,
        score: float,
        probabilities: dict[str, float] | None,
        most_negative: dict[str, Any] | None,
        text: str,
    ) -> SentimentPublic:
        """The public shape, cutting the most negative sentence out of the analysed text."""
        sentence = None
        if most_negative:
            start, end = int(most_negative["start"]), int(most_negative["end"])
            sentence = SentencePublic(
                text=text[start:end],
                start=start,
                end=end,
                label=most_negative["label"],
                score=most_negative["score"],
            )
        return cls(
            label=label, score=score, probabilities=probabilities, most_negative_sentence=sentence
        )


class UxCxPublic(BaseModel):
    """UX / CX / none with its probability."""

    label: str
    probability: float
    probabilities: dict[str, float] | None = None
    subcategory: str | None = None


class LanguagePublic(BaseModel):
    """Detected language; `supported` is false when the English analysers did not judge it."""

    code: str
    confidence: float
    supported: bool


class AnalysisPublic(BaseModel):
    """The analysis of the ticket's current text."""

    sentiment: SentimentPublic | None
    uxcx: UxCxPublic | None
    team: str | None
    analysers: dict[str, str]
    analysed_at: datetime
    note: str | None = None


class TicketPublic(BaseModel):
    """A stored ticket or post with its analysis (null until the worker has run)."""

    id: int
    source: str
    external_id: str
    channel: str
    subject: str | None
    body: str
    author_hash: str | None
    metadata: dict[str, Any]
    language: LanguagePublic | None
    created_at: datetime
    received_at: datetime
    updated_at: datetime
    status: str
    revision: int
    attempts: int
    last_error: str | None
    analysis: AnalysisPublic | None


class TicketsPublic(BaseModel):
    """A page of tickets and the total that match the filters."""

    data: list[TicketPublic]
    count: int
