"""The outbound table: one row per analysed ticket revision to deliver to OUTBOUND_WEBHOOK_URL."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from app.core.db import UTCDateTime, utcnow


class OutboundStatus(StrEnum):
    """Where a delivery stands."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # every attempt failed; kept for a person to look at and retry
    superseded = "superseded"  # the ticket changed before it was sent; a newer row covers it


class OutboundDelivery(SQLModel, table=True):
    """Written in the transaction that stores the analysis (an outbox): never lost."""

    __tablename__ = "outbound_delivery"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True, ondelete="CASCADE")
    revision: int
    event: str = Field(default="ticket.analysed", max_length=64)
    status: str = Field(default=OutboundStatus.pending.value, max_length=16, index=True)
    attempts: int = 0  # tries started, counted when claimed (a crash mid-send counts too)
    # Bumped by every claim; only the sender whose claim set it may record the outcome.
    claims: int = 0
    # While claimed: when the claim's lease runs out and the row may be claimed again.
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
