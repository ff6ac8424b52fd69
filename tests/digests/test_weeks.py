"""ISO week arithmetic: parsing, bounds, year boundaries, the last complete week."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.errors import InvalidInput
from app.digests.weeks import FIRST_WEEK, LAST_WEEK, IsoWeek


def test_parse_and_bounds() -> None:
    w = IsoWeek.parse("2026-W47")
    assert (w.year, w.week) == (2026, 47) and str(w) == "2026-W47"
    assert w.start == datetime(2026, 11, 16, tzinfo=UTC)
    assert w.end == datetime(2026, 11, 23, tzinfo=UTC)
    assert IsoWeek.parse("2026w47") == w  # case and the dash are forgiven


@pytest.mark.parametrize("text", ["2026-47", "W47", "2025-W53", "2026-W00", "2026-W54", "soon"])
def test_bad_weeks_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        IsoWeek.parse(text)
    assert err.value.code == "invalid_week"


def test_year_boundaries() -> None:
    # ISO week 1 of 2026 starts on Monday 29 December 2025; 2026 has 53 weeks, 2025 has 52.
    first = IsoWeek.parse("2026-W01")
    assert first.start == datetime(2025, 12, 29, tzinfo=UTC)
    assert str(first.shift(-1)) == "2025-W52"
    assert str(IsoWeek.parse("2026-W53").shift(1)) == "2027-W01"
    assert IsoWeek.of(datetime(2027, 1, 1, 12, tzinfo=UTC)) == IsoWeek.parse("2026-W53")
    assert [str(w) for w in first.span(3)] == ["2025-W51", "2025-W52", "2026-W01"]


def test_last_complete_week() -> None:
    monday_midnight = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert str(IsoWeek.last_complete(monday_midnight)) == "2026-W47"
    sunday_night = datetime(2026, 11, 22, 23, 59, tzinfo=UTC)
    assert str(IsoWeek.last_complete(sunday_night)) == "2026-W46"
    new_year = datetime(2027, 1, 4, 9, tzinfo=UTC)  # Monday of 2027-W01
    assert str(IsoWeek.last_complete(new_year)) == "2026-W53"


@pytest.mark.parametrize("text", ["0001-W01", "1969-W52", "3000-W01", "9999-W52", "0000-W01"])
def test_weeks_outside_the_years_are_refused_naming_the_range(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        IsoWeek.parse(text)
    assert err.value.code == "invalid_week"
    assert f"'{text}' is out of range: weeks from 1970-W01 to 2999-W52" in err.value.message
    assert (FIRST_WEEK, LAST_WEEK) == ("1970-W01", "2999-W52")


def test_the_first_and_last_weeks_reach_their_trend_without_overflow() -> None:
    first, last = IsoWeek.parse(FIRST_WEEK), IsoWeek.parse(LAST_WEEK)
    assert first.start == datetime(1969, 12, 29, tzinfo=UTC)
    assert [str(w) for w in first.span(3)] == ["1969-W51", "1969-W52", "1970-W01"]
    assert last.end == datetime(2999, 12, 30, tzinfo=UTC) and str(last.shift(1)) == "3000-W01"


def test_digits_other_than_ascii_are_not_a_week() -> None:
    with pytest.raises(InvalidInput):
        IsoWeek.parse("２０２６-W47")  # full-width digits: int() reads them, a week is ASCII
