"""PostgreSQL only: workers share the queue with FOR UPDATE SKIP LOCKED.

Collected only when TEST_DATABASE_URL is set (tests/conftest.py); CI always sets it.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from app.enrich import queue


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
