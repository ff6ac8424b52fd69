"""The raw delivery table: what arrived (kind, size, sha256), beside the tickets made from it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel

from app.core.db import UTCDateTime, utcnow


class RawDelivery(SQLModel, table=True):
    """One request (API call or webhook) as received: its kind, type, size and sha256.

    The body itself is not kept (`payload` stays null): it carries the personal data that is
    redacted from the stored ticket, and the sha256 is enough to recognise a redelivery."""

    __tablename__ = "raw_delivery"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=64)  # "api", later "webhook:zendesk", ...
    content_type: str | None = Field(default=None, max_length=255)
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebhookEvent(SQLModel, table=True):
    """A helpdesk event already stored: a redelivery of the same event id changes nothing.

    Written in the same transaction as the tickets it produced, so an event is either fully
    stored and recorded here, or neither."""

    __tablename__ = "webhook_event"

    provider: str = Field(max_length=32, primary_key=True)
    event_id: str = Field(max_length=255, primary_key=True)
    event: str = Field(max_length=128)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
