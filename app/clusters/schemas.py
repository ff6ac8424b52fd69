"""API shapes for clusters, their members and clustering runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.tickets.schemas import LabelPublic


class ClusterModelLabel(BaseModel):
    """What the members' probabilities say."""

    label: str | None
    leading: str | None
    confidence: float | None
    probabilities: dict[str, float]
    subcategories: dict[str, int]
    evidence: list[str]


class Representative(BaseModel):
    """A message near the cluster's centre."""

    ticket_id: int
    source: str
    external_id: str
    text: str


class ClusterPublic(BaseModel):
    """A recurring issue."""

    id: int
    title: str
    key_phrases: list[str]
    size: int
    status: str  # new, continuing, merged or split (from origin_id)
    origin_id: int | None
    active: bool
    merged_into: int | None
    label: LabelPublic | None  # a correction wins; `mixed` clusters go to the default team
    model_label: ClusterModelLabel
    negative_share: float | None
    mean_sentiment: float | None
    channels: dict[str, int]
    weekly: dict[str, int]
    growth: float | None
    first_seen: datetime | None
    last_seen: datetime | None
    representatives: list[Representative]
    run_id: int | None
    updated_at: datetime


class ClustersPublic(BaseModel):
    """A page of clusters."""

    data: list[ClusterPublic]
    count: int


class MemberPublic(BaseModel):
    """A ticket in a cluster."""

    id: int
    source: str
    external_id: str
    channel: str
    created_at: datetime
    similarity: float
    assigned_by: str
    text: str


class MembersPublic(BaseModel):
    """A page of a cluster's members, most typical first."""

    data: list[MemberPublic]
    count: int


class RunRequest(BaseModel):
    """Options of a clustering run."""

    model_config = ConfigDict(extra="forbid")

    window_days: int | None = Field(default=None, ge=1, le=3660)
    requested_by: str | None = Field(default=None, max_length=255)


RunRequestAdapter: TypeAdapter[RunRequest] = TypeAdapter(RunRequest)


class RunPublic(BaseModel):
    """A clustering run."""

    id: int
    status: str
    window_days: int
    window_start: datetime | None
    window_end: datetime | None
    params: dict[str, Any]
    counts: dict[str, Any]
    seconds: dict[str, float]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MergeRequest(BaseModel):
    """Merge this cluster into another; kept by later runs."""

    model_config = ConfigDict(extra="forbid")

    into: int = Field(ge=1, le=2_147_483_647, description="the cluster that absorbs this one")
    author: str = Field(max_length=255)


MergeRequestAdapter: TypeAdapter[MergeRequest] = TypeAdapter(MergeRequest)
