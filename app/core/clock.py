"""The range of times the service accepts, in one place, and conversions that stay inside it.

Python's datetime ends at years 1 and 9999: a time near either end with a UTC offset cannot be
converted to UTC (OverflowError), and week arithmetic next to it (the week before, an 8-week
trend) overflows too. Every time a client or a helpdesk sends is checked against one range
here, years 1970 to 2999 in UTC, far from both ends, so nothing computed from a stored time can
overflow: a request outside it gets a 422 naming the range, a helpdesk's time outside it is
treated as absent.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

EARLIEST_YEAR = 1970
LATEST_YEAR = 2999
EARLIEST = datetime(EARLIEST_YEAR, 1, 1, tzinfo=UTC)
END = datetime(LATEST_YEAR + 1, 1, 1, tzinfo=UTC)  # exclusive
RANGE_TEXT = f"{EARLIEST_YEAR}-01-01T00:00:00Z to {LATEST_YEAR}-12-31T23:59:59Z"


class TimeOutOfRange(ValueError):
    """A time outside EARLIEST..END; a ValueError, so pydantic reports it as a 422."""


def in_range(value: datetime) -> bool:
    """Whether `value` (naive: UTC) lies in the accepted range."""
    # Comparing aware datetimes never converts them, so this is safe at years 1 and 9999.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return EARLIEST <= aware < END


def to_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (naive: taken as UTC); TimeOutOfRange outside the range."""
    if not in_range(value):
        raise TimeOutOfRange(out_of_range(value))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def out_of_range(value: datetime) -> str:
    """What to tell a client whose time is outside the range."""
    return f"{value.isoformat()} is out of range: times from {RANGE_TEXT} are accepted"


def validate_utc(value: datetime) -> datetime:
    """to_utc for pydantic validators: its error reads as the message alone, not 'Value error'."""
    if not in_range(value):
        raise PydanticCustomError("time_out_of_range", out_of_range(value))
    return to_utc(value)


def to_utc_or_none(value: datetime) -> datetime | None:
    """`value` in UTC, or None outside the range (a helpdesk's time: absent rather than refused)."""
    return to_utc(value) if in_range(value) else None


def from_unix(seconds: float) -> datetime | None:
    """A Unix time in seconds as UTC; None when it is not finite or outside the range."""
    if not math.isfinite(seconds):
        return None
    if not EARLIEST.timestamp() <= seconds < END.timestamp():
        return None
    return datetime.fromtimestamp(seconds, UTC)


# A time as requests carry it (body fields, query parameters): UTC, inside the range, else 422.
UtcTime = Annotated[datetime, AfterValidator(validate_utc)]
