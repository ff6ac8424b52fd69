"""Small helpers shared by tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """The app on a free loopback port (a real uvicorn server in a thread); yields its URL."""
    import uvicorn

    from app.serve import bind_tcp

    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
