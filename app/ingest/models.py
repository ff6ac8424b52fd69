"""The raw delivery table: exactly what arrived, kept beside the tickets made from it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel

from app.core.db import UTCDateTime, utcnow


class RawDelivery(SQLModel, table=True):
    """One request body as received (API call or webhook), stored in the ticket's transaction."""

    __tablename__ = "raw_delivery"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=64)  # "api", later "webhook:zendesk", ...
    content_type: str | None = Field(default=None, max_length=255)
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
