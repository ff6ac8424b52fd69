"""POST /v1/webhooks/{provider}: every provider's payloads and signatures, through the real app."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.core.config import Settings
from app.enrich.worker import Worker
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.tickets.models import Ticket, TicketAnalysis
from tests.conftest import FIXTURES
from tests.helpers import count_rows

SECRETS = {
    "zendesk": "zd-secret-3f9a",
    "freshdesk": "fd-shared-77c1",
    "intercom": "ic-client-secret-0b2e",
    "helpscout": "hs-secret-5d4c",
    "front": "fr-secret-a1b9",
    "generic": "gen-secret-6e0f",
}
HOOKS = FIXTURES / "webhooks"


def load(provider: str, name: str) -> bytes:
    """A fixture body, exactly as stored (the bytes that are signed)."""
    return (HOOKS / provider / name).read_bytes()


def sign(
    provider: str,
    body: bytes,
    *,
    secret: str | None = None,
    when: datetime | None = None,
    event: str | None = None,
) -> dict[str, str]:
    """The headers the provider would send with `body`."""
    key = (secret if secret is not None else SECRETS[provider]).encode()
    when = when or datetime.now(UTC)
    headers = {"Content-Type": "application/json"}
    if provider == "zendesk":
        stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        mac = hmac.new(key, stamp.encode() + body, hashlib.sha256).digest()
        headers["X-Zendesk-Webhook-Signature-Timestamp"] = stamp
        headers["X-Zendesk-Webhook-Signature"] = base64.b64encode(mac).decode()
    elif provider == "intercom":
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()
    elif provider == "helpscout":
        mac = hmac.new(key, body, hashlib.sha1).digest()
        headers["X-HelpScout-Signature"] = base64.b64encode(mac).decode()
        headers["X-HelpScout-Event"] = event or "convo.created"
    elif provider == "front":
        stamp = str(int(when.timestamp() * 1000))
        mac = hmac.new(key, stamp.encode() + b":" + body, hashlib.sha256).digest()
        headers["X-Front-Request-Timestamp"] = stamp
        headers["X-Front-Signature"] = base64.b64encode(mac).decode()
    elif provider == "freshdesk":
        headers["X-Webhook-Secret"] = key.decode()
    elif provider == "generic":
        headers["X-Signature"] = hmac.new(key, body, hashlib.sha256).hexdigest()
    return headers


def secret_settings(**extra: Any) -> dict[str, Any]:
    return {f"{p}_webhook_secret": s for p, s in SECRETS.items()} | extra


@pytest.fixture
def hook_client(make_settings: Callable[..., Settings], analyzer: Analyzer) -> Iterator[TestClient]:
    """The app with every provider's secret configured and NO API key sent."""
    app = create_app(make_settings(**secret_settings()), analyzer=analyzer)
    with TestClient(app) as c:
        yield c


def deliver(
    client: TestClient, provider: str, name: str, *, event: str | None = None, **kw: Any
) -> Any:
    body = load(provider, name)
    return client.post(
        f"/v1/webhooks/{provider}", content=body, headers=sign(provider, body, event=event, **kw)
    )


def tickets(engine: Engine) -> dict[str, Ticket]:
    with Session(engine) as s:
        return {f"{t.source}:{t.external_id}": t for t in s.exec(select(Ticket)).all()}


# provider, file, Help Scout event, {source:external_id: (subject, body fragment)}
STORED = [
    (
        "zendesk",
        "ticket_created.json",
        None,
        {"zendesk:48213": ("Logged out whenever I open invoices", "logs me out every time")},
    ),
    (
        "zendesk",
        "trigger_ticket_updated.json",
        None,
        {"zendesk:48790": ("Where is my order #A-77120?", "out for delivery' for a week")},
    ),
    (
        "freshdesk",
        "ticket_created.json",
        None,
        {"freshdesk:90412": ("Charged twice for my November renewal", "charged £59.00 twice")},
    ),
    (
        "intercom",
        "conversation_user_created.json",
        None,
        {"intercom:215468831457902": (None, "crashes as soon as I tap Export to PDF")},
    ),
    (
        "helpscout",
        "convo.created.json",
        "convo.created",
        {
            "helpscout:2391847765": (
                "Order #58213 arrived with a cracked screen",
                "cracked straight",
            )
        },
    ),
    (
        "front",
        "inbound.json",
        None,
        {
            "front:cnv_a8h2k4m/messages/msg_5tq8r1z": (
                "Booking confirmation never arrived",
                "never got a confirmation e-mail",
            )
        },
    ),
    (
        "generic",
        "ticket.json",
        None,
        {"web_form:CF-000731": ("Cannot reset my password", "says 'token expired'")},
    ),
    (
        "generic",
        "batch.json",
        None,
        {
            "chat:chat-55120": (None, "on hold for 40 minutes"),
            "chat:chat-55121": (None, "returns nothing for 'invoice'"),
        },
    ),
]


@pytest.mark.parametrize(("provider", "name", "event", "expected"), STORED)
def test_each_provider_payload_is_stored_as_tickets(
    hook_client: TestClient,
    engine: Engine,
    provider: str,
    name: str,
    event: str | None,
    expected: dict[str, tuple[str | None, str]],
) -> None:
    r = deliver(hook_client, provider, name, event=event)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["provider"] == provider and body["result"] == "stored"
    assert [f"{t['source']}:{t['external_id']}" for t in body["tickets"]] == list(expected)
    assert all(t["queued"] for t in body["tickets"])
    stored = tickets(engine)
    assert sorted(stored) == sorted(expected)
    for key, (subject, fragment) in expected.items():
        t = stored[key]
        assert t.subject == subject
        assert fragment in t.body
        assert "<" not in t.body  # HTML bodies arrive as plain text
        assert t.status == "pending"
    assert count_rows(engine, "webhook_event") == 1
    # Redelivered as is: acknowledged, nothing new.
    again = deliver(hook_client, provider, name, event=event)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert len(tickets(engine)) == len(expected)


def test_zendesk_fields_and_personal_data(hook_client: TestClient, engine: Engine) -> None:
    assert deliver(hook_client, "zendesk", "ticket_created.json").status_code == 202
    t = tickets(engine)["zendesk:48213"]
    assert t.body.endswith("You can reach me on [PHONE] or at [EMAIL].")
    assert "dana.whitfield" not in t.body and "7700" not in t.body
    assert t.created_at == datetime(2026, 11, 20, 9, 14, 3, tzinfo=UTC)
    assert t.meta["status"] == "NEW" and t.meta["tags"] == ["mobile_app", "ios"]
    assert t.meta["via"] == "web_form"
    expected_author = hmac.new(b"test-salt", b"381945720113", hashlib.sha256).hexdigest()
    assert t.author_hash == expected_author


@pytest.mark.parametrize(
    ("provider", "name", "event", "key", "placeholder", "raw"),
    [
        ("freshdesk", "ticket_created.json", None, "freshdesk:90412", "[CARD]", "4111 1111"),
        ("freshdesk", "ticket_created.json", None, "freshdesk:90412", "[EMAIL]", "brightlane"),
        ("helpscout", "convo.created.json", "convo.created", "helpscout:2391847765",
         "[ADDRESS]", "Harrow Lane"),
        ("helpscout", "convo.created.json", "convo.created", "helpscout:2391847765",
         "[PHONE]", "900123"),
        ("front", "inbound.json", None, "front:cnv_a8h2k4m/messages/msg_5tq8r1z", "[IBAN]",
         "FR14"),
        ("intercom", "conversation_user_created.json", None, "intercom:215468831457902",
         "[EMAIL]", "kowalczyk@"),
    ],
)  # fmt: skip
def test_personal_data_is_redacted_before_storage(
    hook_client: TestClient,
    engine: Engine,
    provider: str,
    name: str,
    event: str | None,
    key: str,
    placeholder: str,
    raw: str,
) -> None:
    assert deliver(hook_client, provider, name, event=event).status_code == 202
    body = tickets(engine)[key].body
    assert placeholder in body and raw not in body


def test_redacted_text_is_what_gets_embedded(
    hook_client: TestClient, engine: Engine, worker: Worker, analyzer: Analyzer
) -> None:
    assert deliver(hook_client, "zendesk", "ticket_created.json").status_code == 202
    worker.drain()
    with Session(engine) as s:
        t = s.exec(select(Ticket)).one()
        a = s.exec(select(TicketAnalysis)).one()
        stored = np.frombuffer(a.embedding, dtype="<f4")
        subject, body = t.subject, t.body
    redacted = analyzer.analyze([f"{subject}\n{body}"])[0].embedding
    raw_detail = json.loads(load("zendesk", "ticket_created.json"))["detail"]
    original = analyzer.analyze([f"{subject}\n{raw_detail['description']}"])[0].embedding
    assert float(stored @ redacted) > 0.9999
    assert float(stored @ original) < 0.999  # the phone and e-mail were never embedded


@pytest.mark.parametrize("provider", sorted(SECRETS))
def test_wrong_signature_is_401_and_nothing_stored(
    hook_client: TestClient, engine: Engine, provider: str
) -> None:
    name = next(n for p, n, _, _ in STORED if p == provider)
    body = load(provider, name)
    r = hook_client.post(
        f"/v1/webhooks/{provider}", content=body, headers=sign(provider, body, secret="wrong")
    )
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_signature"
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "raw_delivery") == 0


@pytest.mark.parametrize("provider", sorted(SECRETS))
def test_missing_signature_is_401(hook_client: TestClient, engine: Engine, provider: str) -> None:
    name = next(n for p, n, _, _ in STORED if p == provider)
    headers = {"Content-Type": "application/json"}
    if provider == "helpscout":
        headers["X-HelpScout-Event"] = "convo.created"
    r = hook_client.post(f"/v1/webhooks/{provider}", content=load(provider, name), headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "missing_signature"
    assert count_rows(engine, "ticket") == 0


def test_signature_over_a_changed_body_is_401(hook_client: TestClient, engine: Engine) -> None:
    body = load("zendesk", "ticket_created.json")
    headers = sign("zendesk", body)
    tampered = body.replace(b"logs me out", b"logs me in!")
    r = hook_client.post("/v1/webhooks/zendesk", content=tampered, headers=headers)
    assert r.status_code == 401
    assert count_rows(engine, "ticket") == 0


@pytest.mark.parametrize(("provider", "name"), [("zendesk", "ticket_created.json"),
                                                ("front", "inbound.json")])  # fmt: skip
def test_stale_timestamp_is_401(
    hook_client: TestClient, engine: Engine, provider: str, name: str
) -> None:
    old = datetime.now(UTC) - timedelta(minutes=6)
    r = deliver(hook_client, provider, name, when=old)
    assert r.status_code == 401 and r.json()["code"] == "stale_signature"
    future = datetime.now(UTC) + timedelta(minutes=6)
    assert deliver(hook_client, provider, name, when=future).status_code == 401
    recent = datetime.now(UTC) - timedelta(minutes=4)
    assert deliver(hook_client, provider, name, when=recent).status_code == 202
    assert count_rows(engine, "ticket") == 1


def test_freshdesk_accepts_basic_auth_with_the_secret(
    hook_client: TestClient, engine: Engine
) -> None:
    body = load("freshdesk", "ticket_created.json")
    good = base64.b64encode(f"freshdesk:{SECRETS['freshdesk']}".encode()).decode()
    bad = base64.b64encode(b"freshdesk:guess").decode()
    headers = {"Content-Type": "application/json"}
    r = hook_client.post(
        "/v1/webhooks/freshdesk", content=body, headers=headers | {"Authorization": f"Basic {bad}"}
    )
    assert r.status_code == 401
    r = hook_client.post(
        "/v1/webhooks/freshdesk", content=body, headers=headers | {"Authorization": f"Basic {good}"}
    )
    assert r.status_code == 202
    assert "freshdesk:90412" in tickets(engine)


def test_provider_without_a_secret_refuses_everything(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    app = create_app(make_settings(), analyzer=analyzer)
    with TestClient(app) as c:
        r = deliver(c, "zendesk", "ticket_created.json")
    assert r.status_code == 401
    assert r.json()["code"] == "webhook_not_configured"
    assert "ZENDESK_WEBHOOK_SECRET" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0


def test_update_requeues_and_an_older_version_never_wins(
    hook_client: TestClient, engine: Engine, worker: Worker
) -> None:
    assert deliver(hook_client, "zendesk", "ticket_created.json").status_code == 202
    worker.drain()
    assert tickets(engine)["zendesk:48213"].status == "done"
    r = deliver(hook_client, "zendesk", "ticket_description_changed.json")
    assert r.status_code == 202
    assert r.json()["tickets"][0]["result"] == "updated" and r.json()["tickets"][0]["queued"]
    t = tickets(engine)["zendesk:48213"]
    assert t.revision == 2 and t.status == "pending" and "iPhone and iPad" in t.body
    with Session(engine) as s:
        assert s.exec(select(TicketAnalysis)).all() == []  # the old analysis is gone
    # The created event again, under a new event id (a retry from another node): it is older
    # than what is stored, so it is acknowledged and not applied.
    stale = json.loads(load("zendesk", "ticket_created.json"))
    stale["id"] = "01JD4X2K8Q3W6E9R0T5Y7U1ZZZ"
    body = json.dumps(stale).encode()
    r = hook_client.post("/v1/webhooks/zendesk", content=body, headers=sign("zendesk", body))
    assert r.status_code == 200 and r.json()["result"] == "duplicate"
    t = tickets(engine)["zendesk:48213"]
    assert t.revision == 2 and "iPhone and iPad" in t.body
    # A status change carries the same text: metadata updated, no new analysis queued.
    worker.drain()
    r = deliver(hook_client, "zendesk", "ticket_status_changed.json")
    assert r.status_code == 200 and r.json()["tickets"][0]["queued"] is False
    t = tickets(engine)["zendesk:48213"]
    assert t.status == "done" and t.meta["status"] == "SOLVED"


def test_freshdesk_update_and_requester_reply(hook_client: TestClient, engine: Engine) -> None:
    assert deliver(hook_client, "freshdesk", "ticket_created.json").status_code == 202
    r = deliver(hook_client, "freshdesk", "ticket_updated.json")
    assert r.status_code == 202 and r.json()["tickets"][0]["result"] == "updated"
    assert "again today on 18 November" in tickets(engine)["freshdesk:90412"].body
    r = deliver(hook_client, "freshdesk", "requester_reply.json")
    assert r.status_code == 202
    replies = [k for k in tickets(engine) if k.startswith("freshdesk:90412/comments/")]
    assert len(replies) == 1
    reply = tickets(engine)[replies[0]]
    assert reply.body.startswith("It has been five working days")
    assert "[PHONE]" in reply.body and reply.meta == {"thread": "90412", "kind": "comment"}


@pytest.mark.parametrize(
    ("provider", "name", "event", "key", "fragment"),
    [
        ("zendesk", "ticket_comment_added.json", None, "zendesk:48213/comments/29875310442",
         "Two days and nobody has answered"),
        ("intercom", "conversation_user_replied.json", None,
         "intercom:215468831457902/parts/28311977352", "Cleared the cache"),
        ("helpscout", "convo.customer.reply.created.json", "convo.customer.reply.created",
         "helpscout:2391847765/threads/7210512236", "Still no replacement"),
    ],
)  # fmt: skip
def test_new_customer_comment_is_its_own_message(
    hook_client: TestClient,
    engine: Engine,
    provider: str,
    name: str,
    event: str | None,
    key: str,
    fragment: str,
) -> None:
    r = deliver(hook_client, provider, name, event=event)
    assert r.status_code == 202, r.text
    stored = tickets(engine)
    assert stored[key].body.startswith(fragment)
    assert stored[key].meta["thread"] == key.split(":", 1)[1].split("/")[0]
    assert deliver(hook_client, provider, name, event=event).json()["result"] == "duplicate"
    assert len(tickets(engine)) == len(stored)


@pytest.mark.parametrize(
    ("provider", "name", "event"),
    [
        ("zendesk", "ticket_comment_added_by_agent.json", None),
        ("intercom", "conversation_admin_replied.json", None),
        ("helpscout", "convo.agent.reply.created.json", "convo.agent.reply.created"),
        ("front", "out_reply.json", None),
    ],
)
def test_agent_replies_store_nothing_new(
    hook_client: TestClient, engine: Engine, provider: str, name: str, event: str | None
) -> None:
    r = deliver(hook_client, provider, name, event=event)
    body = r.json()
    # Zendesk's events carry the ticket itself (stored, the agent's comment not); the others
    # carry only the reply.
    if provider == "zendesk":
        assert r.status_code == 202, r.text
        assert [t["external_id"] for t in body["tickets"]] == ["48213"]
    else:
        assert r.status_code == 200, r.text
        assert body["result"] == "ignored" and body["reason"] and body["tickets"] == []
        assert count_rows(engine, "ticket") == 0
    assert not any("/comments/" in k or "/parts/" in k for k in tickets(engine))


@pytest.mark.parametrize(
    ("provider", "payload", "fragment"),
    [
        ("zendesk", {"hello": "world"}, "Not a Zendesk ticket payload"),
        ("zendesk", {"type": "zen:event-type:ticket.created", "detail": {"subject": "x"}},
         "detail.id is missing"),
        ("intercom", {"data": {}}, "'topic' is missing"),
        ("front", {"type": "inbound", "id": "evt_1", "conversation": {"id": "c"},
                   "target": {"data": {}}}, "target.data.id"),
        ("freshdesk", {"freshdesk_webhook": {"ticket_subject": "hi"}}, "ticket_id is missing"),
        ("generic", {"source": "email", "body": "no id"}, "external_id"),
        ("zendesk", [1, 2], "must be a JSON object"),
    ],
)  # fmt: skip
def test_wrong_payload_shape_is_422_and_nothing_stored(
    hook_client: TestClient, engine: Engine, provider: str, payload: Any, fragment: str
) -> None:
    body = json.dumps(payload).encode()
    r = hook_client.post(f"/v1/webhooks/{provider}", content=body, headers=sign(provider, body))
    assert r.status_code == 422, r.text
    assert fragment in r.json()["message"]
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "webhook_event") == 0


def test_signed_but_not_json_is_400(hook_client: TestClient, engine: Engine) -> None:
    body = b"{not json"
    r = hook_client.post("/v1/webhooks/generic", content=body, headers=sign("generic", body))
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = hook_client.post("/v1/webhooks/nosuchdesk", content=b"{}", headers=sign("generic", b"{}"))
    assert r.status_code == 422 and "zendesk" in r.text
    assert count_rows(engine, "ticket") == 0


def test_concurrent_repeats_store_one_ticket(hook_client: TestClient, engine: Engine) -> None:
    import threading

    body = load("zendesk", "ticket_created.json")
    codes: list[int] = []

    def send() -> None:
        r = hook_client.post("/v1/webhooks/zendesk", content=body, headers=sign("zendesk", body))
        codes.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(codes).count(202) == 1 and sorted(codes).count(200) == 5
    assert count_rows(engine, "ticket") == 1 and count_rows(engine, "webhook_event") == 1


def test_fixture_index_names_every_file() -> None:
    readme = (HOOKS / "README.md").read_text()
    files = sorted(p.relative_to(HOOKS) for p in HOOKS.rglob("*.json"))
    assert files and all(p.name in readme for p in files)
    assert {p.parts[0] for p in files} == set(SECRETS)
