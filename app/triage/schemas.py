"""API shapes for synchronous triage of one text."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.tickets.models import Channel
from app.tickets.schemas import LanguagePublic, SentimentPublic, UxCxPublic


class TriageRequest(BaseModel):
    """One message to analyse; nothing is stored."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the message body")
    subject: str | None = None
    channel: Channel | None = None


TriageRequestAdapter: TypeAdapter[TriageRequest] = TypeAdapter(TriageRequest)


class KnownIssue(BaseModel):
    """The current cluster nearest the text, when close enough to count as part of it."""

    id: int
    title: str
    similarity: float


class TriagePublic(BaseModel):
    """Sentiment, UX/CX label, the team it routes to, and the known issue it belongs to."""

    sentiment: SentimentPublic | None
    uxcx: UxCxPublic | None
    team: str | None
    cluster: KnownIssue | None = None
    language: LanguagePublic
    analysers: dict[str, str]
    note: str | None = None
