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


class EvidencePublic(BaseModel):
    """Words of the analysed text (subject, newline, body) that drove the label.

    `start`/`end` are character offsets into that text; `weight` is the span's share of what
    pushed the decision towards the label.
    """

    text: str
    start: int
    end: int
    weight: float


class UxCxPublic(BaseModel):
    """What the model said: UX / CX / none with calibrated probabilities, the sub-category
    (and its probability within the label) and the evidence.

    `problem_probability` is P(the message reports a problem) from the analysis branch's own
    head (null from labellers without one): the label is `none` when it is under the
    artifact's calibrated threshold, so `probability` need not be the largest of the three."""

    label: str
    probability: float
    probabilities: dict[str, float] | None = None
    subcategory: str | None = None
    subcategory_probability: float | None = None
    problem_probability: float | None = None
    evidence: list[EvidencePublic] = []

    @classmethod
    def build(
        cls,
        *,
        label: str,
        probability: float,
        probabilities: dict[str, float] | None,
        subcategory: str | None,
        subcategory_probability: float | None,
        evidence: list[dict[str, Any]] | None,
        text: str,
        problem_probability: float | None = None,
    ) -> UxCxPublic:
        """The public shape, cutting each evidence span out of the analysed text."""
        spans = [
            EvidencePublic(
                text=text[int(e["start"]) : int(e["end"])],
                start=int(e["start"]),
                end=int(e["end"]),
                weight=float(e["weight"]),
            )
            for e in evidence or []
        ]
        return cls(
            label=label,
            probability=probability,
            probabilities=probabilities,
            subcategory=subcategory,
            subcategory_probability=subcategory_probability,
            problem_probability=problem_probability,
            evidence=spans,
        )


class LabelPublic(BaseModel):
    """The label that counts: a person's correction when there is one, else the model's.

    `team` comes from the routing table in use now.
    """

    label: str
    subcategory: str | None
    team: str | None
    source: str  # "override" or "model"
    author: str | None = None  # who corrected it (overrides only)
    note: str | None = None
    updated_at: datetime | None = None


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


class TicketCluster(BaseModel):
    """The recurring issue (cluster) a ticket is part of now."""

    id: int
    title: str
    similarity: float
    assigned_by: str  # run, worker or merge


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
    label: LabelPublic | None = None  # null until analysed or corrected
    cluster: TicketCluster | None = None  # null: unclustered (an outlier, or not yet clustered)
    analysis: AnalysisPublic | None


class TicketsPublic(BaseModel):
    """A page of tickets and the total that match the filters."""

    data: list[TicketPublic]
    count: int
