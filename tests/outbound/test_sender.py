"""The outbound sender under failure: leases instead of open transactions, poison rows, outcomes
that cannot be recorded, concurrent senders, receivers that do not speak HTTP, one backoff.

Tickets are written straight to the database (no analysis needed to send one), so these tests
run on SQLite and PostgreSQL without the analysers."""

from __future__ import annotations

import json
import logging
import socketserver
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from app.core import retry
from app.core.config import DEFAULT_ROUTING_TABLE
from app.core.db import utcnow
from app.outbound import service as outbound_service
from app.outbound.models import OutboundDelivery
from app.outbound.service import OutboundConfig
from app.routing.table import RoutingTable
from app.tickets.models import Ticket, TicketAnalysis

SECRET = "outbound-secret-42"
ROUTING = RoutingTable.load(DEFAULT_ROUTING_TABLE)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, dict) and value:
        depth += 1
        value = next(iter(value.values()))
    return depth


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST, optionally runs `on_post` while
    the sender waits for the answer, and answers `status` after `delay_s`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0
        self.on_post: Callable[[dict[str, Any]], None] | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = {"headers": headers, "body": json.loads(body)}
                if receiver.on_post is not None:
                    receiver.on_post(request)
                time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.requests.append(request)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivery_ids(self) -> list[int]:
        with self.lock:
            return [int(r["headers"]["x-issuelens-delivery"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Records(logging.Handler):
    """Collects the app.outbound log records (pytest's logging plugin may be off)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= level]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def outbound_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("app.outbound")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _config(url: str, **values: Any) -> OutboundConfig:
    return OutboundConfig(url=url, secret=SECRET, **{"max_attempts": 3, **values})


def _tickets(engine: Engine, metas: list[dict[str, Any]]) -> list[int]:
    """Store one ticket per metadata, bypassing ingest, and queue a delivery for each; the
    delivery ids in order."""
    now = utcnow()
    with Session(engine, expire_on_commit=False) as session:
        tickets = [
            Ticket(
                source="api",
                external_id=f"t{i}",
                channel="ticket",
                body=f"Ticket number {i} about a late order.",
                content_hash=f"{i:064x}",
                meta=meta,
                created_at=now,
                status="done",
            )
            for i, meta in enumerate(metas)
        ]
        session.add_all(tickets)
        session.flush()
        outbound_service.enqueue(session, [(t.id or 0, 1) for t in tickets])
        session.commit()
        ids = session.exec(select(OutboundDelivery.id).order_by(col(OutboundDelivery.id))).all()
    return [int(i or 0) for i in ids]


def _rows(engine: Engine) -> dict[int, OutboundDelivery]:
    with Session(engine) as session:
        return {
            d.id or 0: d
            for d in session.exec(select(OutboundDelivery).order_by(col(OutboundDelivery.id)))
        }


def _expire_leases(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(OutboundDelivery)
            .where(col(OutboundDelivery.status) == "pending")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def _send(engine: Engine, config: OutboundConfig, **kwargs: Any) -> int:
    return outbound_service.send_due(engine, config=config, routing=ROUTING, **kwargs)


# ---- no transaction over the network ---------------------------------------------------------


def _probe_database(db_url: str, delivery_id: int) -> dict[str, Any]:
    """From another connection, while the sender waits: may this connection write at once?"""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        # timeout=0: fail at once, instead of waiting, if any connection holds the write lock.
        conn = sqlite3.connect(str(url.database), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE outbound_delivery SET last_error = 'probed' WHERE id = ?", (delivery_id,)
            )
            conn.execute("ROLLBACK")
            return {"write": True}
        except sqlite3.OperationalError as exc:
            return {"write": str(exc)}
        finally:
            conn.close()
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as pg:
        idle_in_transaction = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        ).fetchone()
        try:
            with pg.transaction():
                pg.execute(
                    "SELECT id FROM outbound_delivery WHERE id = %s FOR UPDATE NOWAIT",
                    (delivery_id,),
                )
                pg.execute("SELECT id FROM outbound_delivery FOR UPDATE NOWAIT")
            write: bool | str = True
        except psycopg.errors.LockNotAvailable as exc:
            write = str(exc)
        return {
            "write": write,
            "idle_in_transaction": idle_in_transaction[0] if idle_in_transaction else None,
        }


def test_no_transaction_is_open_while_a_delivery_is_posted(
    engine: Engine, db_url: str, receiver: Receiver
) -> None:
    ids = _tickets(engine, [{"n": i} for i in range(3)])
    probes: list[dict[str, Any]] = []
    receiver.on_post = lambda request: probes.append(
        _probe_database(db_url, int(request["headers"]["x-issuelens-delivery"]))
    )
    assert _send(engine, _config(receiver.url)) == 3
    assert receiver.delivery_ids() == ids
    # Every POST, the first and the later ones, found the database free: the claim was
    # committed before the first send, and each outcome after its own send.
    expected: dict[str, Any] = {"write": True}
    if engine.dialect.name == "postgresql":
        expected["idle_in_transaction"] = 0
    assert probes == [expected] * 3
    assert {d.status for d in _rows(engine).values()} == {"delivered"}


def test_the_delivery_id_header_is_the_same_on_every_retry(
    engine: Engine, receiver: Receiver
) -> None:
    (did,) = _tickets(engine, [{}])
    receiver.status = 503
    _send(engine, _config(receiver.url))
    _expire_leases(engine)
    receiver.status = 200
    _send(engine, _config(receiver.url))
    assert receiver.delivery_ids() == [did, did]
    assert [r["body"]["delivery_id"] for r in receiver.requests] == [did, did]
    assert [r["body"]["ticket"]["revision"] for r in receiver.requests] == [1, 1]
    assert _rows(engine)[did].attempts == 2


# ---- outcomes that cannot be recorded ---------------------------------------------------------


def test_an_outcome_that_cannot_be_recorded_costs_no_other_row(
    engine: Engine,
    receiver: Receiver,
    outbound_log: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, broken, last = _tickets(engine, [{}, {}, {}])
    real_record = outbound_service._record

    def record(engine: Engine, claim: outbound_service.Claim, outcome: Any) -> bool:
        if claim.id == broken:
            raise OperationalError("UPDATE outbound_delivery", {}, Exception("database is locked"))
        return real_record(engine, claim, outcome)

    monkeypatch.setattr(outbound_service, "_record", record)
    config = _config(receiver.url)
    before = utcnow()
    assert _send(engine, config) == 3
    rows = _rows(engine)
    assert rows[first].status == rows[last].status == "delivered"
    # Sent, but its outcome is lost: it stays claimed until the lease runs out.
    assert rows[broken].status == "pending" and rows[broken].attempts == 1
    lease = timedelta(seconds=outbound_service.lease_s(config, 20))
    assert before + lease <= rows[broken].next_attempt_at <= utcnow() + lease
    (error,) = outbound_log.at(logging.ERROR)
    assert "not recorded" in error.getMessage() and error.__dict__["delivery"] == broken

    monkeypatch.setattr(outbound_service, "_record", real_record)
    assert _send(engine, config) == 0  # nothing re-sent while the lease holds
    assert receiver.delivery_ids() == [first, broken, last]
    _expire_leases(engine)
    assert _send(engine, config) == 1
    # At least once: only the unrecorded one goes again, with the same delivery id.
    assert Counter(receiver.delivery_ids()) == {first: 1, broken: 2, last: 1}
    rows = _rows(engine)
    assert rows[broken].status == "delivered" and rows[broken].attempts == 2


def test_a_sender_whose_lease_ran_out_cannot_overwrite_the_next_claim(
    engine: Engine, receiver: Receiver
) -> None:
    (did,) = _tickets(engine, [{}])
    config = _config(receiver.url)
    (stale,) = outbound_service._claim(engine, config=config, limit=5)
    assert outbound_service._claim(engine, config=config, limit=5) == []  # leased
    _expire_leases(engine)
    (fresh,) = outbound_service._claim(engine, config=config, limit=5)
    assert (stale.token, fresh.token) == (1, 2) and fresh.attempts == 2
    failed = outbound_service.Outcome(
        outbound_service.OutboundStatus.pending, 1, last_status_code=503, last_error="HTTP 503"
    )
    assert outbound_service._record(engine, stale, failed) is False
    delivered = outbound_service.Outcome(
        outbound_service.OutboundStatus.delivered, 2, last_status_code=200, delivered_at=utcnow()
    )
    assert outbound_service._record(engine, fresh, delivered) is True
    row = _rows(engine)[did]
    assert row.status == "delivered" and row.last_error is None and row.attempts == 2


def test_tries_that_never_recorded_an_outcome_give_up_at_max_attempts(
    engine: Engine, receiver: Receiver, outbound_log: Records
) -> None:
    (did,) = _tickets(engine, [{}])
    with engine.begin() as conn:
        conn.execute(update(OutboundDelivery).values(attempts=3, last_error="HTTP 502"))
    assert _send(engine, _config(receiver.url, max_attempts=3)) == 0
    row = _rows(engine)[did]
    assert row.status == "failed" and row.attempts == 3
    assert row.last_error == (
        "gave up after 3 attempts; the last outcome was never recorded (HTTP 502)"
    )
    assert receiver.requests == []
    (warning,) = outbound_log.at(logging.WARNING)
    assert warning.__dict__["delivery"] == did


def test_a_batch_that_runs_past_its_lease_hands_the_rest_back(
    engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _tickets(engine, [{}, {}])
    config = _config(receiver.url, timeout_s=2.0)  # 6 s for one send
    monkeypatch.setattr(outbound_service, "lease_s", lambda config, limit: 7.0)
    receiver.delay_s = 1.5  # after the first send, 5.5 s are left: too few for a second
    assert _send(engine, config) == 2
    assert receiver.delivery_ids() == [first]
    rows = _rows(engine)
    assert rows[first].status == "delivered"
    # Handed back: due now, its attempt not counted, so the next round sends it.
    assert rows[second].status == "pending" and rows[second].attempts == 0
    assert rows[second].next_attempt_at <= utcnow()
    receiver.delay_s = 0.0
    assert _send(engine, config) == 1
    assert receiver.delivery_ids() == [first, second]


# ---- poison rows -----------------------------------------------------------------------------


def _break_analysis(engine: Engine, delivery_id: int) -> None:
    """Give the delivery's ticket a stored analysis that can never be read back (an evidence
    span without its end): a row no retry will ever fix."""
    with Session(engine) as session:
        ticket_id = session.get_one(OutboundDelivery, delivery_id).ticket_id
        session.add(
            TicketAnalysis(
                ticket_id=ticket_id,
                revision=1,
                uxcx_label="UX",
                uxcx_probability=0.9,
                uxcx_evidence=[{"start": 0, "weight": 1.0}],
                embedding=b"\0\0\0\0",
                embedding_dim=1,
            )
        )
        session.commit()


def test_a_poison_row_fails_alone_and_the_rest_are_sent(
    client: TestClient,
    engine: Engine,
    receiver: Receiver,
    outbound_log: Records,
) -> None:
    # First in line: a row whose payload cannot be built; then metadata nested 400 levels
    # (stored before ingest bounded it), 32 levels (what ingest accepts) and a flat one.
    poison, very_deep, deep, plain = _tickets(
        engine, [{}, _nested(400), _nested(32), {"order": "A-1"}]
    )
    _break_analysis(engine, poison)
    config = _config(receiver.url)
    assert _send(engine, config) == 4
    # The others went out in the same round.
    assert receiver.delivery_ids() == [very_deep, deep, plain]
    sent = [r["body"]["ticket"]["metadata"] for r in receiver.requests]
    assert _depth(sent[0]) <= 33  # served clipped, never a failure
    assert sent[1] == _nested(32) and sent[2] == {"order": "A-1"}

    failed = client.get("/v1/outbound", params={"status": "failed"}).json()
    assert failed["count"] == 1
    (row,) = failed["data"]
    assert row["id"] == poison and row["attempts"] == 0 and row["last_status_code"] is None
    assert row["last_error"] == "payload could not be built: KeyError: 'end'"
    delivered = client.get("/v1/outbound", params={"status": "delivered"}).json()
    assert {d["id"] for d in delivered["data"]} == {very_deep, deep, plain}

    # Logged once, with the traceback; later rounds neither retry nor log it.
    for _ in range(3):
        assert _send(engine, config) == 0
    (error,) = outbound_log.at(logging.ERROR)
    assert error.exc_info is not None and error.__dict__["delivery"] == poison
    assert len(receiver.requests) == 3


def test_a_deleted_ticket_supersedes_its_delivery(engine: Engine, receiver: Receiver) -> None:
    gone, kept = _tickets(engine, [{}, {}])
    with Session(engine) as session:
        ticket_id = _rows(engine)[gone].ticket_id
        session.delete(session.get_one(Ticket, ticket_id))
        session.commit()
    assert _send(engine, _config(receiver.url)) == 1  # the cascade took the delivery too
    assert receiver.delivery_ids() == [kept]


# ---- receivers that do not answer HTTP ----------------------------------------------------------


class _NotHttp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"220 this is an SMTP server\r\n")


def test_an_answer_that_is_not_http_is_a_failed_attempt(engine: Engine) -> None:
    (did,) = _tickets(engine, [{}])
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _NotHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        assert _send(engine, _config(url, max_attempts=1)) == 1
    finally:
        server.shutdown()
        server.server_close()
    row = _rows(engine)[did]
    assert row.status == "failed" and row.last_status_code is None
    assert row.last_error is not None and row.last_error.startswith("BadStatusLine")


# ---- concurrent senders ----------------------------------------------------------------------


def test_concurrent_senders_send_each_delivery_once(engine: Engine, receiver: Receiver) -> None:
    ids = _tickets(engine, [{"n": i} for i in range(12)])
    receiver.delay_s = 0.05
    config = _config(receiver.url)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def sender() -> None:
        try:
            barrier.wait()
            while _send(engine, config, limit=3):
                pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(receiver.delivery_ids()) == ids  # each once
    rows = _rows(engine)
    assert {d.status for d in rows.values()} == {"delivered"}
    assert {d.attempts for d in rows.values()} == {1}


# ---- one backoff -----------------------------------------------------------------------------


def test_retries_wait_what_core_retry_backoff_says(
    engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    (did,) = _tickets(engine, [{}])
    calls: list[tuple[Any, ...]] = []

    def fake_backoff(*args: Any, **kwargs: Any) -> float:
        calls.append(args)
        return 7.0

    monkeypatch.setattr(retry, "backoff", fake_backoff)
    receiver.status = 503
    config = _config(receiver.url, backoff_s=2.5)
    before = utcnow()
    _send(engine, config)
    row = _rows(engine)[did]
    assert calls == [(1, 2.5, outbound_service.MAX_BACKOFF_S)]
    assert row.status == "pending"
    assert before + timedelta(seconds=7) <= row.next_attempt_at <= utcnow() + timedelta(seconds=7)
    _expire_leases(engine)
    _send(engine, config)
    assert calls[-1] == (2, 2.5, outbound_service.MAX_BACKOFF_S)


def test_the_sender_loop_backs_off_while_rounds_fail(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[tuple[Any, ...]] = []
    rounds = 0

    def failing_round(*args: Any, **kwargs: Any) -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 4:
            sender.stop()
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    def fake_backoff(*args: Any, **kwargs: Any) -> float:
        waits.append(args)
        return 0.01

    monkeypatch.setattr(outbound_service, "send_due", failing_round)
    monkeypatch.setattr(retry, "backoff", fake_backoff)
    sender = outbound_service.OutboundSender(
        engine=engine, config=_config("http://127.0.0.1:9/x"), routing=ROUTING, poll_s=0.5
    )
    thread = sender.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert waits == [(n, 0.5, outbound_service.MAX_ERROR_WAIT_S) for n in (1, 2, 3, 4)]
