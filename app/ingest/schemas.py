"""API shapes for ingesting tickets and posts."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from app.core import clock
from app.tickets.models import Channel


def _email_or_twitter_time(value: Any) -> Any:
    """Times as e-mail headers (RFC 2822) and Twitter's API write them, as datetimes; anything
    else is left for the ISO 8601 parser (and its error message)."""
    if not isinstance(value, str) or not value[:1].isalpha():
        return value
    try:
        return datetime.strptime(value.strip(), "%a %b %d %H:%M:%S %z %Y")  # Twitter
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value)  # "Tue, 31 Oct 2017 22:11:45 +0000"
    except (TypeError, ValueError, OverflowError):  # a year of 20 digits overflows
        return value


class TicketCreate(BaseModel):
    """One ticket or social post, as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=64, description="e.g. zendesk, email, twitter")
    external_id: str = Field(
        min_length=1, max_length=255, description="the id in the source system"
    )
    channel: Channel | None = Field(default=None, description="defaults from the source")
    subject: str | None = None
    body: str
    author: str | None = Field(
        default=None, max_length=320, description="stored only as a salted hash"
    )
    created_at: datetime | None = Field(
        default=None,
        description=(
            "when it was written (ISO 8601, RFC 2822 or Twitter's format; "
            f"{clock.RANGE_TEXT}); default now"
        ),
    )
    metadata: dict[str, Any] | None = None

    @field_validator("external_id", mode="before")
    @classmethod
    def _id_as_text(cls, v: Any) -> Any:
        # Helpdesks commonly number their tickets; an integer id is the same id as its digits.
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("source")
    @classmethod
    def _normalise_source(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("created_at", mode="before")
    @classmethod
    def _other_formats(cls, v: Any) -> Any:
        return _email_or_twitter_time(v)

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, v: datetime | None) -> datetime | None:
        # A time without a zone is taken as UTC, so a repeat compares equal to what was stored;
        # one outside the accepted years is a 422 naming them (never an overflow, a 500).
        return None if v is None else clock.validate_utc(v)


TicketBatchAdapter: TypeAdapter[TicketCreate | list[TicketCreate]] = TypeAdapter(
    TicketCreate | list[TicketCreate]
)


class IngestItemResult(BaseModel):
    """What happened to one item of a batch."""

    index: int
    id: int
    source: str
    external_id: str
    result: Literal["created", "updated", "unchanged"]
    queued: bool = Field(description="true when the text is (re)queued for analysis")


class IngestResponse(BaseModel):
    """The outcome of a batch: one entry per item, in order."""

    data: list[IngestItemResult]
    count: int
    created: int
    updated: int
    unchanged: int


class PostCreate(BaseModel):
    """One social post (tweet/X, Reddit, app-store review, forum post) as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    platform: str = Field(
        min_length=1, max_length=64, description="twitter, x, reddit, app_store, forum, ..."
    )
    id: str = Field(min_length=1, max_length=255, description="the post's id on the platform")
    text: str
    title: str | None = Field(default=None, description="a review's or thread's title")
    author: str | None = Field(
        default=None, max_length=320, description="the handle; stored only as a salted hash"
    )
    url: str | None = Field(default=None, max_length=2_048, pattern=r"^https?://\S+$")
    rating: float | None = Field(
        default=None, ge=0, le=5, description="stars, where the platform has them (0-5)"
    )
    created_at: datetime | None = Field(
        default=None,
        description=(
            f"when it was posted (ISO 8601, RFC 2822 or Twitter's format; {clock.RANGE_TEXT})"
        ),
    )
    metadata: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("platform")
    @classmethod
    def _normalise_platform(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("created_at", mode="before")
    @classmethod
    def _other_formats(cls, v: Any) -> Any:
        return _email_or_twitter_time(v)

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else clock.validate_utc(v)

    def to_ticket(self) -> TicketCreate:
        """The post as a ticket of the social channel; url and rating go into its metadata."""
        meta = dict(self.metadata or {})
        if self.url is not None:
            meta["url"] = self.url
        if self.rating is not None:
            meta["rating"] = self.rating
        return TicketCreate(
            source=self.platform,
            external_id=self.id,
            channel=Channel.social,
            subject=self.title,
            body=self.text,
            author=self.author,
            created_at=self.created_at,
            metadata=meta or None,
        )


PostBatchAdapter: TypeAdapter[PostCreate | list[PostCreate]] = TypeAdapter(
    PostCreate | list[PostCreate]
)


class WebhookResult(BaseModel):
    """What a helpdesk delivery did: stored (new or changed), a repeat, or nothing to store."""

    provider: str
    event: str = Field(description="the provider's event name, e.g. ticket.created")
    event_id: str = Field(description="the id deliveries are deduplicated on")
    result: Literal["stored", "duplicate", "ignored"]
    reason: str | None = Field(default=None, description="why an event was ignored")
    tickets: list[IngestItemResult]
