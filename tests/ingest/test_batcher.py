"""Group commit: concurrent deliveries share transactions, and one bad delivery fails alone."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, event

from app.core.body import RawBody
from app.core.config import Settings
from app.ingest import service as ingest_service
from app.ingest.batcher import StoreBatcher
from app.ingest.schemas import IngestItemResult, TicketCreate
from app.ingest.sources import SourceRegistry
from tests.helpers import count_rows


def _delivery(settings: Settings, n: int, **extra: Any) -> ingest_service.Delivery:
    item = TicketCreate(
        source="zendesk", external_id=str(n), body=f"The app crashes, case {n}", **extra
    )
    prepared = ingest_service.prepare([item], settings=settings, sources=SourceRegistry(), salt="s")
    return ingest_service.Delivery(
        prepared=prepared,
        raw=RawBody(data=f"body {n}".encode(), content_type="application/json"),
        kind="webhook:zendesk",
        event=("zendesk", f"evt-{n}", "ticket.created"),
    )


def _commits(engine: Engine) -> list[int]:
    counter = [0]

    @event.listens_for(engine, "commit")
    def _count(conn: Any) -> None:
        counter[0] += 1

    return counter


def test_concurrent_deliveries_share_commits(engine: Engine, settings: Settings) -> None:
    batcher = StoreBatcher(engine)
    commits = _commits(engine)

    async def send() -> list[list[IngestItemResult]]:
        return await asyncio.gather(*(batcher.store(_delivery(settings, n)) for n in range(40)))

    results = asyncio.run(send())
    assert [r[0].external_id for r in results] == [str(n) for n in range(40)]
    assert all(r[0].result == "created" and r[0].queued for r in results)
    assert len({r[0].id for r in results}) == 40
    assert count_rows(engine, "ticket") == 40 and count_rows(engine, "webhook_event") == 40
    assert count_rows(engine, "raw_delivery") == 40  # one record per delivery, as alone
    # The first delivery is written at once; the 39 that arrived meanwhile go together.
    assert commits[0] <= 3, commits[0]

    async def again() -> list[list[IngestItemResult]]:
        return await asyncio.gather(*(batcher.store(_delivery(settings, n)) for n in range(40)))

    repeats = asyncio.run(again())
    assert all(r[0].result == "unchanged" and not r[0].queued for r in repeats)
    assert count_rows(engine, "ticket") == 40


def test_one_bad_delivery_fails_alone(engine: Engine, settings: Settings) -> None:
    batcher = StoreBatcher(engine)
    # A set is not JSON: this delivery's insert fails on every database.
    bad = _delivery(settings, 99, metadata={"tags": {"a", "b"}})

    async def send() -> list[Any]:
        deliveries = [_delivery(settings, n) for n in range(5)] + [bad]
        deliveries += [_delivery(settings, n) for n in range(5, 10)]
        return await asyncio.gather(*(batcher.store(d) for d in deliveries), return_exceptions=True)

    outcomes = asyncio.run(send())
    assert isinstance(outcomes[5], Exception)
    good = [o for i, o in enumerate(outcomes) if i != 5]
    assert all(isinstance(o, list) and o[0].result == "created" for o in good)
    assert count_rows(engine, "ticket") == 10
    assert count_rows(engine, "webhook_event") == 10  # the bad delivery's event is not recorded
