"""Outbound webhook: analysed tickets reach a local receiver, signed; failures retry, then stick."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from app.core.config import Settings
from app.core.db import utcnow
from app.enrich.worker import Worker
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.outbound import service as outbound_service
from app.outbound.models import OutboundDelivery
from app.routing.table import RoutingTable
from app.tickets.models import Ticket
from tests.helpers import AUTH

SECRET = "outbound-secret-42"


class Receiver:
    """A small HTTP server on 127.0.0.1 that records requests and answers `status`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def out_client(
    make_settings: Callable[..., Settings], analyzer: Analyzer, receiver: Receiver
) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(
        outbound_webhook_url=receiver.url, outbound_webhook_secret=SECRET, outbound_max_attempts=3
    )
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        yield c, settings


def _worker(engine: Engine, analyzer: Analyzer, settings: Settings) -> Worker:
    return Worker(
        engine=engine,
        analyzer=analyzer,
        routing=RoutingTable.load(settings.routing_table),
        outbound=settings.outbound_config() is not None,
    )


def _send(engine: Engine, settings: Settings) -> int:
    config = settings.outbound_config()
    assert config is not None
    return outbound_service.send_due(
        engine, config=config, routing=RoutingTable.load(settings.routing_table)
    )


def test_analysed_ticket_is_delivered_signed(
    out_client: tuple[TestClient, Settings], engine: Engine, analyzer: Analyzer, receiver: Receiver
) -> None:
    client, settings = out_client
    item = {
        "source": "email",
        "external_id": "o1",
        "body": "The app crashes when I upload a photo.",
    }
    tid = client.post("/v1/tickets", json=item).json()["data"][0]["id"]
    assert _send(engine, settings) == 0  # nothing analysed yet, nothing to send
    _worker(engine, analyzer, settings).drain()
    assert _send(engine, settings) == 1
    (req,) = receiver.requests
    headers = {k.lower(): v for k, v in req["headers"].items()}
    stamp = headers["x-issuelens-timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + req["body"], hashlib.sha256)
    assert headers["x-issuelens-signature"] == "sha256=" + expected.hexdigest()
    assert headers["x-issuelens-event"] == "ticket.analysed"
    payload = json.loads(req["body"])
    assert payload["event"] == "ticket.analysed"
    assert payload["ticket"]["id"] == tid and payload["ticket"]["external_id"] == "o1"
    assert payload["ticket"]["label"]["label"] == "UX"
    assert payload["ticket"]["label"]["team"] == "product-engineering"
    delivered = client.get("/v1/outbound", params={"status": "delivered"}).json()
    assert delivered["count"] == 1 and delivered["data"][0]["ticket_id"] == tid
    assert delivered["data"][0]["attempts"] == 1 and delivered["data"][0]["last_status_code"] == 200
    assert _send(engine, settings) == 0  # sent once only


def test_metadata_never_goes_out_with_personal_data(
    out_client: tuple[TestClient, Settings], engine: Engine, analyzer: Analyzer, receiver: Receiver
) -> None:
    # Issue 17: customer_email and phone went out in every delivery. New rows are redacted at
    # ingest; a row stored before that (written here straight into the table) on the way out.
    client, settings = out_client
    meta = {"customer_email": "dana@example.com", "phone": "+44 7700 900461", "plan": "pro"}
    item = {"source": "email", "external_id": "m1", "body": "App crashes", "metadata": meta}
    tid = client.post("/v1/tickets", json=item).json()["data"][0]["id"]
    old = {"customer_email": "old@example.com", "note": "call 020 7946 0123", "plan": "pro"}
    old_id = client.post(
        "/v1/tickets", json={"source": "email", "external_id": "m2", "body": "Refund late"}
    ).json()["data"][0]["id"]
    with Session(engine) as s:
        s.execute(update(Ticket).where(Ticket.id == old_id).values(meta=old))  # type: ignore[arg-type]
        s.commit()
    _worker(engine, analyzer, settings).drain()
    assert _send(engine, settings) == 2
    sent = {json.loads(r["body"])["ticket"]["id"]: r["body"] for r in receiver.requests}
    for body in sent.values():
        for value in ("dana@example.com", "7700 900461", "old@example.com", "7946 0123"):
            assert value.encode() not in body
    assert json.loads(sent[tid])["ticket"]["metadata"] == {
        "customer_email": "[REDACTED]",
        "phone": "[REDACTED]",
        "plan": "pro",
    }
    assert json.loads(sent[old_id])["ticket"]["metadata"] == {
        "customer_email": "[REDACTED]",
        "note": "call [PHONE]",
        "plan": "pro",
    }


def test_failing_receiver_is_retried_with_backoff_then_recorded(
    out_client: tuple[TestClient, Settings], engine: Engine, analyzer: Analyzer, receiver: Receiver
) -> None:
    client, settings = out_client
    receiver.status = 503
    item = {"source": "email", "external_id": "o2", "body": "My parcel never arrived."}
    client.post("/v1/tickets", json=item)
    _worker(engine, analyzer, settings).drain()
    for attempt in range(1, 4):
        assert _send(engine, settings) == 1
        with Session(engine) as s:
            d = s.exec(select(OutboundDelivery)).one()
        assert d.attempts == attempt and d.last_status_code == 503
        if attempt < 3:
            assert d.status == "pending"
            # Doubling from OUTBOUND_BACKOFF_S (2 s) with +-20% jitter.
            wait = (d.next_attempt_at - utcnow()).total_seconds()
            assert 2 * 2 ** (attempt - 1) * 0.75 < wait <= 2 * 2 ** (attempt - 1) * 1.2
            assert _send(engine, settings) == 0  # not due yet
            with engine.begin() as conn:
                conn.execute(
                    update(OutboundDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1))
                )
    assert len(receiver.requests) == 3
    failed = client.get("/v1/outbound", params={"status": "failed"}).json()
    assert failed["count"] == 1
    assert failed["data"][0]["last_error"] == "HTTP 503" and failed["data"][0]["attempts"] == 3
    assert _send(engine, settings) == 0  # given up: stays failed
    # A person fixes the receiver and retries it.
    receiver.status = 204
    did = failed["data"][0]["id"]
    r = client.post(f"/v1/outbound/{did}/retry")
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0
    assert _send(engine, settings) == 1
    assert client.get("/v1/outbound", params={"status": "delivered"}).json()["count"] == 1
    again = client.post(f"/v1/outbound/{did}/retry")
    assert again.status_code == 422 and again.json()["code"] == "not_failed"
    assert client.post("/v1/outbound/99999/retry").status_code == 404


def test_unreachable_receiver_records_the_error(
    make_settings: Callable[..., Settings], engine: Engine, analyzer: Analyzer
) -> None:
    settings = make_settings(
        outbound_webhook_url="http://127.0.0.1:9/nothing-listens",
        outbound_webhook_secret=SECRET,
        outbound_max_attempts=1,
        outbound_timeout_s=2.0,
    )
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        c.post("/v1/tickets", json={"source": "email", "external_id": "o3", "body": "Refund?"})
        _worker(engine, analyzer, settings).drain()
        assert _send(engine, settings) == 1
        d = c.get("/v1/outbound").json()["data"][0]
    assert d["status"] == "failed" and d["last_status_code"] is None
    assert "refused" in d["last_error"].lower() or "URLError" in d["last_error"]


def test_changed_ticket_supersedes_the_pending_delivery(
    out_client: tuple[TestClient, Settings], engine: Engine, analyzer: Analyzer, receiver: Receiver
) -> None:
    client, settings = out_client
    item = {"source": "email", "external_id": "o4", "body": "Login fails with error 500."}
    client.post("/v1/tickets", json=item)
    _worker(engine, analyzer, settings).drain()
    client.post("/v1/tickets", json={**item, "body": "Login fails with error 500 on Android."})
    assert _send(engine, settings) == 1
    assert receiver.requests == []  # the old analysis is not sent
    _worker(engine, analyzer, settings).drain()
    assert _send(engine, settings) == 1
    (req,) = receiver.requests
    assert json.loads(req["body"])["ticket"]["revision"] == 2
    statuses = sorted(d["status"] for d in client.get("/v1/outbound").json()["data"])
    assert statuses == ["delivered", "superseded"]


def test_in_process_sender_delivers_without_help(
    make_settings: Callable[..., Settings], analyzer: Analyzer, receiver: Receiver
) -> None:
    from tests.helpers import wait_for

    settings = make_settings(
        outbound_webhook_url=receiver.url,
        outbound_webhook_secret=SECRET,
        worker_in_process=True,
        worker_poll_interval_s=0.2,
    )
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        c.post("/v1/tickets", json={"source": "email", "external_id": "o5", "body": "Late order"})
        assert wait_for(lambda: len(receiver.requests) == 1, timeout=30)
    assert json.loads(receiver.requests[0]["body"])["ticket"]["external_id"] == "o5"


def test_outbound_needs_a_secret() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="OUTBOUND_WEBHOOK_SECRET"):
        Settings(_env_file=None, outbound_webhook_url="http://127.0.0.1:1/x")
