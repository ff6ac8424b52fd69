"""Ticket and TicketAnalysis tables."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from app.core.db import JSONType, UTCDateTime, utcnow


class Channel(StrEnum):
    """Where a message came from: a helpdesk ticket or a public social post."""

    ticket = "ticket"
    social = "social"


class AnalysisStatus(StrEnum):
    """Where a ticket is in the work queue."""

    pending = "pending"
    done = "done"
    failed = "failed"


class Ticket(SQLModel, table=True):
    """A support ticket or social post, unique per (source, external_id)."""

    __tablename__ = "ticket"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_ticket_source_external_id"),
        Index("ix_ticket_status_id", "status", "id"),
        Index("ix_ticket_received_at", "received_at"),
        # The worker's two lanes (app/enrich/queue.py, migration 0010): pending tickets with a
        # short and a long body, so the oldest short one is found without reading long bodies.
        Index(
            "ix_ticket_pending_short",
            "id",
            postgresql_where=text("status = 'pending' AND length(body) <= 2000"),
            sqlite_where=text("status = 'pending' AND length(body) <= 2000"),
        ),
        Index(
            "ix_ticket_pending_long",
            "id",
            postgresql_where=text("status = 'pending' AND length(body) > 2000"),
            sqlite_where=text("status = 'pending' AND length(body) > 2000"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    external_id: str = Field(max_length=255)
    channel: str = Field(max_length=16)
    author_hash: str | None = Field(default=None, max_length=64)
    subject: str | None = Field(default=None, sa_type=Text)
    body: str = Field(sa_type=Text)
    # sha256 of subject and body: a redelivery with the same text changes nothing.
    content_hash: str = Field(max_length=64)
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    language: str | None = Field(default=None, max_length=16)
    language_confidence: float | None = None
    language_supported: bool | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: str = Field(default=AnalysisStatus.pending, max_length=16)
    # Bumped whenever the text changes, so an analysis of an older text is never stored as current.
    revision: int = 1
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
    raw_delivery_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("raw_delivery.id", ondelete="SET NULL"), index=True),
    )


class TicketAnalysis(SQLModel, table=True):
    """What the analysers said about a ticket's current text."""

    __tablename__ = "ticket_analysis"

    ticket_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("ticket.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
    )
    revision: int
    sentiment_label: str | None = Field(default=None, max_length=16)
    sentiment_score: float | None = None
    sentiment_probabilities: dict[str, float] | None = Field(default=None, sa_type=JSONType)
    # {"start", "end", "label", "score"} of the most negative sentence (offsets into the
    # analysed text: subject and body), for texts of several sentences.
    sentiment_most_negative: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    uxcx_label: str | None = Field(default=None, max_length=8, index=True)
    uxcx_probability: float | None = None
    uxcx_probabilities: dict[str, float] | None = Field(default=None, sa_type=JSONType)
    uxcx_subcategory: str | None = Field(default=None, max_length=64)
    uxcx_subcategory_probability: float | None = None
    # P(the message reports a problem), when the labeller decides that on its own.
    uxcx_problem_probability: float | None = None
    # [{"start", "end", "weight"}]: the words that drove the label (offsets into the analysed
    # text: subject and body).
    uxcx_evidence: list[dict[str, Any]] | None = Field(default=None, sa_type=JSONType)
    team: str | None = Field(default=None, max_length=128)
    # float32 little-endian bytes of the unit-length sentence embedding.
    embedding: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    embedding_dim: int
    analysers: dict[str, str] = Field(default_factory=dict, sa_type=JSONType)
    analysed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
