"""Small helpers shared by tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from app.tickets.models import Ticket

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def count_rows(engine: Engine, table: str) -> int:
    """Rows in a table."""
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def tickets_by_status(engine: Engine) -> dict[str, int]:
    """How many tickets are in each analysis status."""
    with Session(engine) as s:
        out: dict[str, int] = {}
        for t in s.exec(select(Ticket)).all():
            out[t.status] = out.get(t.status, 0) + 1
        return out


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll until `predicate()` is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
