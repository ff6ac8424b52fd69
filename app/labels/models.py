"""Human corrections of the UX/CX labeller: they win over the model everywhere."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, Text
from sqlmodel import Field, SQLModel

from app.core.db import UTCDateTime, utcnow


class TicketLabel(SQLModel, table=True):
    """A person's label for one ticket; kept when the ticket is re-analysed or the model is
    retrained, and fed back to `python -m pipelines train-uxcx` as training data."""

    __tablename__ = "ticket_label"

    ticket_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("ticket.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
    )
    label: str = Field(max_length=8, index=True)
    subcategory: str | None = Field(default=None, max_length=64)
    author: str = Field(max_length=255)
    note: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
