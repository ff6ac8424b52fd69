"""Stored digests: each generated digest kept as it was rendered (and sent)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from app.core.db import JSONType, UTCDateTime, utcnow


class StoredDigest(SQLModel, table=True):
    """A digest as generated: its JSON, Markdown and HTML, and what happened to each delivery."""

    __tablename__ = "digest"

    id: int | None = Field(default=None, primary_key=True)
    week: str = Field(max_length=8, index=True)  # 2026-W47
    team: str | None = Field(default=None, max_length=128)
    trigger: str = Field(default="api", max_length=16)  # api, cli or schedule
    payload: dict[str, Any] = Field(sa_type=JSONType)  # the Digest JSON
    markdown: str = Field(sa_type=Text)
    html: str = Field(sa_type=Text)
    # channel -> {"status": "pending"|"delivered"|"failed", "attempts": n, "error": ..., "at": ...}
    delivery: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    generated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
