"""The weekly digest's documented JSON shape (also what Markdown, HTML, Slack and email show)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class DigestWeek(BaseModel):
    """One week's volume, label split and sentiment (for charts and the headline)."""

    week: str = Field(description="ISO week, e.g. 2026-W47")
    messages: int
    ux: int
    cx: int
    none: int
    unlabelled: int = Field(description="not analysed yet, or not English")
    negative_share: float | None = Field(description="share of analysed messages that are negative")
    mean_sentiment: float | None = Field(description="mean sentiment score in [-1, 1]")


class Headline(BaseModel):
    """The week in four numbers."""

    messages: int
    previous_messages: int
    change: float | None = Field(description="messages vs the previous week (0.25 = +25%)")
    negative_share: float | None
    ux_share: float | None
    cx_share: float | None
    none_share: float | None


class Quote(BaseModel):
    """A representative message of a cluster this week (personal data already redacted)."""

    ticket_id: int
    text: str = Field(description="the message, at most 280 characters")
    source: str
    channel: str
    created_at: datetime
    sentiment: str | None


class DigestCluster(BaseModel):
    """A recurring issue as the week saw it."""

    id: int
    title: str
    key_phrases: list[str]
    label: str = Field(description="UX, CX, none or mixed: a person's correction wins")
    team: str
    count: int = Field(description="messages this week")
    previous_mean: float = Field(description="mean messages per week over the 4 weeks before")
    growth: float | None = Field(description="count / previous_mean; null when previous_mean is 0")
    trend: list[int] = Field(description="messages per week, oldest first (`trend_weeks`)")
    trend_weeks: list[str]
    negative_share: float | None
    mean_sentiment: float | None
    first_seen: datetime | None
    quotes: list[Quote]


class TeamSection(BaseModel):
    """One team's share of the week."""

    team: str
    messages: int = Field(description="messages in this team's clusters this week")
    clusters: list[int] = Field(description="ids of this team's clusters, by volume")


class DigestRules(BaseModel):
    """The thresholds the sections were chosen with."""

    top: int
    rising_min_count: int
    rising_min_growth: float
    new_within_weeks: int
    quiet_min_previous_mean: float
    quiet_max_share: float = Field(description="quiet: this week at most this share of the mean")
    trend_weeks: int


class Digest(BaseModel):
    """The weekly issue-cluster digest."""

    week: str
    start: datetime
    end: datetime
    team: str | None = Field(description="only this team's clusters, when set")
    generated_at: datetime
    headline: Headline
    weekly: list[DigestWeek] = Field(description="the trend weeks, oldest first")
    top: list[DigestCluster] = Field(
        description="largest clusters this week (sections list UX, CX and mixed clusters; "
        "clusters of messages with no problem only count in the headline)"
    )
    rising: list[DigestCluster] = Field(description="growing against their 4-week mean")
    new: list[DigestCluster] = Field(
        description="first seen within the last `rules.new_within_weeks` weeks (this one included)"
    )
    quiet: list[DigestCluster] = Field(description="active before, silent this week")
    teams: list[TeamSection]
    rules: DigestRules


class StoredDigestPublic(BaseModel):
    """A digest as it was generated (and sent)."""

    id: int
    week: str
    team: str | None
    trigger: str = Field(description="api, cli or schedule")
    generated_at: datetime
    delivery: dict[str, Any] = Field(
        description="channel -> status (pending, delivered, failed), attempts, error, at"
    )


class StoredDigestsPublic(BaseModel):
    """A page of stored digests, newest first."""

    data: list[StoredDigestPublic]
    count: int
