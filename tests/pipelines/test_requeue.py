"""python -m pipelines requeue: failed or done tickets go back to the queue and get analysed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from app.enrich.worker import Worker
from app.tickets.models import Ticket
from pipelines.__main__ import main
from tests.helpers import tickets_by_status


def test_requeue_failed_then_all(
    client: TestClient,
    engine: Engine,
    worker: Worker,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    items = [{"source": "api", "external_id": str(i), "body": f"crash {i}"} for i in range(4)]
    client.post("/v1/tickets", json=items)
    worker.drain()
    with Session(engine) as s:
        s.execute(
            update(Ticket)
            .where(Ticket.external_id == "0")
            .values(status="failed", attempts=3, last_error="boom")
        )
        s.commit()
    from app.core.config import get_settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        assert main(["requeue"]) == 0
        assert "requeued 1 tickets (failed)" in capsys.readouterr().out
        assert tickets_by_status(engine) == {"done": 3, "pending": 1}
        worker.drain()
        assert tickets_by_status(engine) == {"done": 4}
        assert main(["requeue", "--status", "all", "--source", "api"]) == 0
        assert tickets_by_status(engine) == {"pending": 4}
    finally:
        get_settings.cache_clear()
    with Session(engine) as s:
        t = s.exec(select(Ticket).where(Ticket.external_id == "0")).one()
        assert t.attempts == 0 and t.last_error is None
