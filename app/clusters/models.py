"""Recurring issues: clustering runs, the clusters they keep up to date, and their members."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

from app.core.db import JSONType, UTCDateTime, utcnow


class RunStatus:
    """Where a clustering run is."""

    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class ClusterRun(SQLModel, table=True):
    """One clustering of a time window; the current view is the last run that finished."""

    __tablename__ = "cluster_run"

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default=RunStatus.queued, max_length=16, index=True)
    window_days: int
    window_start: datetime | None = Field(default=None, sa_type=UTCDateTime)
    window_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    # messages, clusters, outliers, outlier_share, new, continuing, merged, split
    counts: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    seconds: dict[str, float] = Field(default_factory=dict, sa_type=JSONType)
    requested_by: str | None = Field(default=None, max_length=255)
    error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Cluster(SQLModel, table=True):
    """A recurring issue. Its id is kept across runs while the issue continues."""

    __tablename__ = "cluster"
    __table_args__ = (Index("ix_cluster_active_size", "active", "size"),)

    id: int | None = Field(default=None, primary_key=True)
    active: bool = True
    # new, continuing, split (from `origin_id`), merged (members of several earlier clusters)
    status: str = Field(default="new", max_length=16)
    origin_id: int | None = None
    merged_into: int | None = Field(default=None, index=True)  # a person merged it
    run_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("cluster_run.id", ondelete="SET NULL"))
    )
    title: str = Field(default="", max_length=255)
    key_phrases: list[str] = Field(default_factory=list, sa_type=JSONType)
    representatives: list[int] = Field(default_factory=list, sa_type=JSONType)  # ticket ids
    size: int = 0
    negative_share: float | None = None
    mean_sentiment: float | None = None
    # From all members' probabilities (app.nlp.uxcx.label_group).
    label: str | None = Field(default=None, max_length=8)  # UX, CX, none or mixed
    leading_label: str | None = Field(default=None, max_length=8)
    label_confidence: float | None = None
    label_probabilities: dict[str, float] = Field(default_factory=dict, sa_type=JSONType)
    subcategories: dict[str, int] = Field(default_factory=dict, sa_type=JSONType)
    evidence: list[str] = Field(default_factory=list, sa_type=JSONType)
    channels: dict[str, int] = Field(default_factory=dict, sa_type=JSONType)
    weekly: dict[str, int] = Field(default_factory=dict, sa_type=JSONType)  # ISO week -> count
    growth: float | None = None  # last week vs the mean of the weeks before
    first_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    centroid: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ClusterMember(SQLModel, table=True):
    """Which cluster a ticket belongs to now (none: not a row)."""

    __tablename__ = "cluster_member"

    ticket_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("ticket.id", ondelete="CASCADE"), primary_key=True,
            autoincrement=False,
        ),
    )  # fmt: skip
    cluster_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("cluster.id", ondelete="CASCADE"), index=True, nullable=False
        )
    )
    similarity: float
    assigned_by: str = Field(default="run", max_length=16)  # run, worker or merge


class ClusterLabel(SQLModel, table=True):
    """A person's UX/CX label for a cluster; kept across runs while the cluster id lives."""

    __tablename__ = "cluster_label"

    cluster_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("cluster.id", ondelete="CASCADE"), primary_key=True,
            autoincrement=False,
        ),
    )  # fmt: skip
    label: str = Field(max_length=8)
    subcategory: str | None = Field(default=None, max_length=64)
    author: str = Field(max_length=255)
    note: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
