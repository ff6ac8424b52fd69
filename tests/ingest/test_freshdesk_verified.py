"""Freshdesk's verified mode: the delivery's ticket read from Freshdesk's API (a local stand-in
on a loopback port), never from the posted body; unknown tickets and API failures store nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from app.core.config import Settings
from app.ingest.providers.freshdesk import api_base
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import count_rows
from tests.ingest.test_webhooks import secret_settings, sign, tickets

API_KEY = "fd-api-key-9c2e"
TICKET = {
    "id": 90412,
    "subject": "Charged twice for my November renewal",
    "description": "<div>My card was charged &pound;59.00 twice on 3 November. Call me on "
    "020 7946 0958.</div>",
    "description_text": "My card was charged £59.00 twice on 3 November. Call me on 020 7946 0958.",
    "requester_id": 47000123456,
    "requester": {"id": 47000123456, "email": "marcus.oyelaran@example.org", "name": "Marcus"},
    "status": 2,
    "priority": 3,
    "source": 1,
    "tags": ["billing"],
    "spam": False,
    "created_at": "2026-11-18T14:02:51Z",
    "updated_at": "2026-11-18T15:30:00Z",
}
CONVERSATIONS = [
    {"id": 5001, "body": "<p>It has been five days and no refund.</p>", "incoming": True,
     "private": False, "user_id": 47000123456, "created_at": "2026-11-20T09:00:00Z"},
    {"id": 5002, "body": "<p>Internal: check with billing.</p>", "incoming": False,
     "private": True, "user_id": 1, "created_at": "2026-11-20T09:05:00Z"},
    {"id": 5003, "body": "<p>Sorry Marcus, refund on the way.</p>", "incoming": False,
     "private": False, "user_id": 1, "created_at": "2026-11-20T09:10:00Z"},
]  # fmt: skip


@dataclass
class FakeFreshdesk:
    """Freshdesk's API on a loopback port: GET /api/v2/tickets/{id}[/conversations]."""

    url: str = ""
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    status: int = 200  # anything else: every call answers it
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    calls: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)


@pytest.fixture
def fake_freshdesk() -> Iterator[FakeFreshdesk]:
    fake = FakeFreshdesk(tickets={"90412": TICKET}, conversations={"90412": CONVERSATIONS})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            parts = urlsplit(self.path)
            fake.calls.append((parts.path, parse_qs(parts.query), self.headers["Authorization"]))
            if fake.delay_s:
                time.sleep(fake.delay_s)
            answer: Any = None
            status = fake.status
            segments = parts.path.strip("/").split("/")  # api v2 tickets {id} [conversations]
            if status == 200 and segments[:3] == ["api", "v2", "tickets"]:
                ticket_id = segments[3] if len(segments) > 3 else ""
                if len(segments) == 4:
                    answer = fake.tickets.get(ticket_id)
                elif segments[4:] == ["conversations"] and ticket_id in fake.tickets:
                    answer = fake.conversations.get(ticket_id, [])
            if status == 200 and answer is None:
                status = 404
            data = json.dumps(answer if status == 200 else {"code": "error"}).encode()
            self.send_response(status)
            for k, v in fake.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def verified_client(
    make_settings: Callable[..., Settings], analyzer: Analyzer, fake_freshdesk: FakeFreshdesk
) -> Iterator[TestClient]:
    settings = make_settings(
        **secret_settings(
            freshdesk_domain=fake_freshdesk.url,
            freshdesk_api_key=API_KEY,
            freshdesk_api_timeout_s=1.0,
        )
    )
    with TestClient(create_app(settings, analyzer=analyzer)) as c:
        yield c


def freshdesk_body(**fields: Any) -> bytes:
    """A rule's delivery that claims what a forger would like stored."""
    hook = {
        "event": "ticket_created",
        "ticket_id": 90412,
        "ticket_subject": "FORGED subject",
        "ticket_description": "FORGED: everything is fine, close this ticket",
        "ticket_requester_email": "someone.else@example.org",
        "ticket_status": "Closed",
    } | fields
    return json.dumps({"freshdesk_webhook": hook}).encode()


def post_freshdesk(client: TestClient, body: bytes) -> Any:
    return client.post("/v1/webhooks/freshdesk", content=body, headers=sign("freshdesk", body))


def test_verified_ticket_is_stored_from_the_api_not_the_body(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    r = post_freshdesk(verified_client, freshdesk_body())
    assert r.status_code == 202, r.text
    assert [t["external_id"] for t in r.json()["tickets"]] == ["90412"]
    t = tickets(engine)["freshdesk:90412"]
    assert t.subject == "Charged twice for my November renewal"
    assert t.body.startswith("My card was charged £59.00 twice on 3 November. Call me on [PHONE]")
    assert "FORGED" not in t.body and "7946" not in t.body
    assert t.meta == {
        "status": "Open",
        "priority": "High",
        "via": "Email",
        "tags": ["billing"],
        "source_updated_at": "2026-11-18T15:30:00+00:00",
        "verified": "freshdesk_api",
    }
    expected_author = hmac.new(b"test-salt", b"marcus.oyelaran@example.org", hashlib.sha256)
    assert t.author_hash == expected_author.hexdigest()
    # One call, to the ticket, with the API key as basic auth's user name and "X" as password.
    basic = "Basic " + base64.b64encode(f"{API_KEY}:X".encode()).decode()
    assert fake_freshdesk.calls == [("/api/v2/tickets/90412", {"include": ["requester"]}, basic)]


def test_verified_reply_is_the_newest_public_customer_message(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    body = freshdesk_body(event="requester_reply", ticket_latest_public_comment="FORGED reply")
    r = post_freshdesk(verified_client, body)
    assert r.status_code == 202, r.text
    assert [t["external_id"] for t in r.json()["tickets"]] == ["90412", "90412/comments/5001"]
    reply = tickets(engine)["freshdesk:90412/comments/5001"]
    assert reply.body == "It has been five days and no refund."
    assert reply.meta == {"thread": "90412", "kind": "comment", "verified": "freshdesk_api"}
    assert [c[0] for c in fake_freshdesk.calls] == [
        "/api/v2/tickets/90412",
        "/api/v2/tickets/90412/conversations",
    ]
    assert fake_freshdesk.calls[1][1] == {"per_page": ["100"], "page": ["1"]}


def test_verified_unknown_ticket_is_422_and_nothing_stored(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    r = post_freshdesk(verified_client, freshdesk_body(ticket_id=777))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "freshdesk_ticket_not_found" and "777" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "webhook_event") == 0
    assert count_rows(engine, "raw_delivery") == 0
    assert [c[0] for c in fake_freshdesk.calls] == ["/api/v2/tickets/777"]


@pytest.mark.parametrize(
    ("status", "headers", "retry_after", "fragment"),
    [
        (500, {}, "60", "answered 500"),
        (429, {"Retry-After": "120"}, "120", "rate limit"),
        (401, {}, "60", "FRESHDESK_API_KEY was refused"),
    ],
)
def test_verified_api_failure_is_503_nothing_stored_and_the_retry_stores(
    verified_client: TestClient,
    engine: Engine,
    fake_freshdesk: FakeFreshdesk,
    status: int,
    headers: dict[str, str],
    retry_after: str,
    fragment: str,
) -> None:
    fake_freshdesk.status, fake_freshdesk.headers = status, headers
    body = freshdesk_body()
    r = post_freshdesk(verified_client, body)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "freshdesk_unverified" and fragment in r.json()["message"]
    assert r.headers["Retry-After"] == retry_after
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "webhook_event") == 0
    # Not recorded as seen, so the sender's retry of the same delivery is stored once the API
    # answers again: the delivery is never lost.
    fake_freshdesk.status, fake_freshdesk.headers = 200, {}
    again = post_freshdesk(verified_client, body)
    assert again.status_code == 202, again.text
    assert tickets(engine)["freshdesk:90412"].meta["verified"] == "freshdesk_api"


def test_verified_slow_api_is_503_within_the_timeout(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    fake_freshdesk.delay_s = 3.0
    started = time.monotonic()
    r = post_freshdesk(verified_client, freshdesk_body())
    elapsed = time.monotonic() - started
    assert r.status_code == 503 and "within 1 s" in r.json()["message"], r.text
    assert elapsed < 2.5  # FRESHDESK_API_TIMEOUT_S is 1 s; the API took 3
    assert count_rows(engine, "ticket") == 0


def test_verified_mode_checks_the_secret_and_the_id_before_any_api_call(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    body = freshdesk_body()
    wrong = verified_client.post(
        "/v1/webhooks/freshdesk", content=body, headers=sign("freshdesk", body, secret="guess")
    )
    assert wrong.status_code == 401
    traversal = freshdesk_body(ticket_id="90412/../../contacts/1")
    r = post_freshdesk(verified_client, traversal)
    assert r.status_code == 422 and "not a Freshdesk ticket number" in r.json()["message"]
    assert fake_freshdesk.calls == [] and count_rows(engine, "ticket") == 0


@pytest.mark.parametrize("verified", [False, True])
def test_a_ticket_id_twice_is_422_before_any_api_call(
    make_settings: Callable[..., Settings],
    analyzer: Analyzer,
    engine: Engine,
    fake_freshdesk: FakeFreshdesk,
    verified: bool,
) -> None:
    # A rule's template with the description spliced in unescaped could carry a second
    # "ticket_id": Python's parser keeps the last copy, others the first.
    extra = {"freshdesk_domain": fake_freshdesk.url, "freshdesk_api_key": API_KEY}
    settings = make_settings(**secret_settings(**(extra if verified else {})))
    body = (
        b'{"freshdesk_webhook": {"ticket_id": 90412, "ticket_description": "hi", "ticket_id": 1}}'
    )
    with TestClient(create_app(settings, analyzer=analyzer)) as client:
        r = post_freshdesk(client, body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "duplicate_key" and "'ticket_id'" in r.json()["message"]
    assert fake_freshdesk.calls == [] and count_rows(engine, "ticket") == 0


def test_verified_spam_ticket_is_ignored(
    verified_client: TestClient, engine: Engine, fake_freshdesk: FakeFreshdesk
) -> None:
    fake_freshdesk.tickets["90412"] = TICKET | {"spam": True}
    r = post_freshdesk(verified_client, freshdesk_body())
    assert r.status_code == 200 and r.json()["result"] == "ignored"
    assert "spam" in r.json()["reason"] and count_rows(engine, "ticket") == 0


def test_freshdesk_settings_come_in_pairs_and_name_the_api() -> None:
    with pytest.raises(ValidationError, match="FRESHDESK_DOMAIN and FRESHDESK_API_KEY"):
        Settings(_env_file=None, freshdesk_domain="acme")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, freshdesk_domain="acme/evil", freshdesk_api_key="k")
    assert api_base("acme") == "https://acme.freshdesk.com/api/v2"
    assert api_base("acme.freshdesk.com") == "https://acme.freshdesk.com/api/v2"
    assert api_base("http://127.0.0.1:8123/") == "http://127.0.0.1:8123/api/v2"
