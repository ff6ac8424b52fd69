"""ISO weeks: parsing "2026-W47", their UTC bounds, and the last complete week.

Only the weeks of app.core.clock's years (FIRST_WEEK to LAST_WEEK) are accepted: every week a
digest reaches from one of them (its 8-week trend, the week before) stays far from datetime's
limits, where the arithmetic would overflow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from app.core import clock
from app.core.errors import InvalidInput

_WEEK = re.compile(r"^(\d{4})-?W(\d{2})$", re.ASCII)
FIRST_WEEK = f"{clock.EARLIEST_YEAR}-W01"
LAST_WEEK = f"{clock.LATEST_YEAR}-W{date(clock.LATEST_YEAR, 12, 28).isocalendar().week:02d}"


@dataclass(frozen=True, order=True, slots=True)
class IsoWeek:
    """An ISO 8601 week: Monday 00:00 UTC to the next Monday."""

    year: int
    week: int

    @classmethod
    def parse(cls, text: str) -> IsoWeek:
        """'2026-W47' (or '2026W47'); 422 naming the problem otherwise."""
        match = _WEEK.match(text.strip().upper())
        if not match:
            raise InvalidInput(
                f"week {text!r} is not an ISO week like 2026-W47.", code="invalid_week"
            )
        year, week = int(match.group(1)), int(match.group(2))
        if not clock.EARLIEST_YEAR <= year <= clock.LATEST_YEAR:
            raise InvalidInput(
                f"week {text.strip()!r} is out of range: weeks from {FIRST_WEEK} to {LAST_WEEK} "
                "only.",
                code="invalid_week",
            )
        try:
            date.fromisocalendar(year, week, 1)
        except ValueError:
            raise InvalidInput(f"{year} has no ISO week {week}.", code="invalid_week") from None
        return cls(year, week)

    @classmethod
    def of(cls, when: datetime | date) -> IsoWeek:
        """The ISO week a time (UTC) or a date falls in."""
        if isinstance(when, datetime):
            when = (when.astimezone(UTC) if when.tzinfo else when).date()
        year, week, _ = when.isocalendar()
        return cls(year, week)

    @classmethod
    def last_complete(cls, now: datetime) -> IsoWeek:
        """The latest week that has ended by `now`."""
        return cls.of(now).shift(-1)

    @property
    def start(self) -> datetime:
        """Monday 00:00 UTC."""
        day = date.fromisocalendar(self.year, self.week, 1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The next Monday 00:00 UTC (exclusive)."""
        return self.start + timedelta(days=7)

    def shift(self, weeks: int) -> IsoWeek:
        """The week `weeks` later (negative: earlier), across year boundaries."""
        return IsoWeek.of(self.start + timedelta(weeks=weeks))

    def span(self, count: int) -> list[IsoWeek]:
        """The `count` weeks ending with this one, oldest first."""
        return [self.shift(-i) for i in range(count - 1, -1, -1)]

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"
