"""PostgreSQL only: workers share the queue with FOR UPDATE SKIP LOCKED.

Collected only when TEST_DATABASE_URL is set (tests/conftest.py); CI always sets it.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.enrich import queue
from app.enrich.queue import Lane
from app.tickets.models import Ticket


def ingest(client: TestClient, items: list[dict]) -> None:
    assert client.post("/v1/tickets", json=items).status_code == 202


def test_skip_locked_gives_concurrent_workers_disjoint_batches(
    client: TestClient, engine: Engine
) -> None:
    ingest(
        client, [{"source": "api", "external_id": str(i), "body": f"bug {i}"} for i in range(10)]
    )
    with Session(engine) as a, Session(engine) as b:
        first = [t.id for t in queue.claim_locked(a, limit=6)]
        second = [t.id for t in queue.claim_locked(b, limit=6)]
        assert len(first) == 6 and len(second) == 4
        assert not set(first) & set(second)
        a.rollback()
        b.rollback()


def test_a_budgeted_claim_locks_only_the_tickets_it_takes(
    client: TestClient, engine: Engine
) -> None:
    """Candidates over the budget are released (the savepoint is rolled back), so a second
    worker gets the next ticket at once instead of skipping everything the first one saw."""
    body = "The sync keeps failing and support has not answered. " * 60  # ~3,200 characters
    ingest(
        client,
        [{"source": "email", "external_id": f"l{i}", "body": f"{i} {body}"} for i in range(4)],
    )
    with Session(engine) as a, Session(engine) as b:
        lane_a, first = queue.claim(
            a, lanes=(Lane.long,), max_tickets=10, max_chars=4_000, lock=True
        )
        lane_b, second = queue.claim(
            b, lanes=(Lane.long,), max_tickets=10, max_chars=4_000, lock=True
        )
        ids_a, ids_b = [t.id for t in first], [t.id for t in second]
        assert lane_a is lane_b is Lane.long
        assert len(ids_a) == len(ids_b) == 1 and ids_b[0] == ids_a[0] + 1
        # Both still hold their tickets (a third worker skips them), and only those.
        with Session(engine) as c:
            free = c.exec(
                select(Ticket.id)
                .where(col(Ticket.id).in_(ids_a + ids_b))
                .with_for_update(skip_locked=True)
            ).all()
            assert free == []
            others = c.exec(
                select(Ticket.id)
                .where(col(Ticket.id).not_in(ids_a + ids_b))
                .with_for_update(skip_locked=True)
            ).all()
            assert len(others) == 2
            c.rollback()
        a.rollback()
        b.rollback()
