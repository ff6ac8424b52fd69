from __future__ import annotations

from app.core.retry import backoff


def test_backoff_doubles_per_failure_without_jitter() -> None:
    assert [backoff(n, 2.0, 3600.0, jitter=0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped_even_after_absurd_attempt_counts() -> None:
    assert backoff(10_000, 2.0, 3600.0, jitter=0) == 3600.0
    assert backoff(0, 2.0, 3600.0, jitter=0) == 2.0


def test_backoff_jitter_stays_within_twenty_percent() -> None:
    waits = [backoff(3, 10.0, 3600.0) for _ in range(200)]
    assert min(waits) >= 32.0 and max(waits) <= 48.0
    assert len(set(waits)) > 1
