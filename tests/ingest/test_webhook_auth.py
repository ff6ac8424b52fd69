"""Webhook authenticity: ids only from signed data, every credential header exactly once, one
reading of a signed body (Freshdesk's verified mode: tests/ingest/test_freshdesk_verified.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.core.config import Settings
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import count_rows
from tests.ingest.test_webhooks import (
    SECRETS,
    load,
    secret_settings,
    sign,
    tickets,
)

HS_CREATED = load("helpscout", "convo.created.json")
HS_REPLY = load("helpscout", "convo.customer.reply.created.json")
HS_AGENT = load("helpscout", "convo.agent.reply.created.json")


@pytest.fixture
def hooks(make_settings: Callable[..., Settings], analyzer: Analyzer) -> Iterator[TestClient]:
    """The app with every provider's secret configured and no API key sent."""
    with TestClient(create_app(make_settings(**secret_settings()), analyzer=analyzer)) as c:
        yield c


def post_helpscout(client: TestClient, body: bytes, event: str) -> Any:
    return client.post(
        "/v1/webhooks/helpscout", content=body, headers=sign("helpscout", body, event=event)
    )


def event_ids(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT provider, event_id, event FROM webhook_event")).all()
    return sorted((r[0], r[1], r[2]) for r in rows)


# --- Help Scout: the event header is not signed --------------------------------------------


@pytest.mark.parametrize(
    "other_event",
    ["convo.customer.reply.created", "convo.agent.reply.created", "convo.deleted", "no.such"],
)
def test_helpscout_resend_under_another_event_name_makes_no_second_ticket(
    hooks: TestClient,
    engine: Engine,
    other_event: str,
) -> None:
    first = post_helpscout(hooks, HS_CREATED, "convo.created")
    assert first.status_code == 202, first.text
    assert first.json()["event_id"] == hashlib.sha256(HS_CREATED).hexdigest()
    again = post_helpscout(hooks, HS_CREATED, other_event)
    assert again.status_code == 200, again.text
    stores = other_event == "convo.customer.reply.created"
    assert again.json()["result"] == ("duplicate" if stores else "ignored")
    assert [(t["external_id"], t["result"], t["queued"]) for t in again.json()["tickets"]] == (
        [("2391847765", "unchanged", False)] if stores else []
    )
    assert sorted(tickets(engine)) == ["helpscout:2391847765"]
    assert count_rows(engine, "ticket") == 1
    assert event_ids(engine) == [
        ("helpscout", hashlib.sha256(HS_CREATED).hexdigest(), "convo.created")
    ]


def test_helpscout_retry_is_the_same_event(hooks: TestClient, engine: Engine) -> None:
    """What Help Scout resends after a failure: the same body with the same event header."""
    assert post_helpscout(hooks, HS_REPLY, "convo.customer.reply.created").status_code == 202
    retry = post_helpscout(hooks, HS_REPLY, "convo.customer.reply.created")
    assert retry.status_code == 200 and retry.json()["result"] == "duplicate"
    assert sorted(tickets(engine)) == ["helpscout:2391847765/threads/7210512236"]


def test_helpscout_ticket_keys_come_from_the_body_not_the_event(
    hooks: TestClient,
    engine: Engine,
) -> None:
    # The opening conversation, first seen under the reply event's name: its only customer
    # thread is the conversation's first, so it is the conversation's ticket either way.
    r = post_helpscout(hooks, HS_CREATED, "convo.customer.reply.created")
    assert r.status_code == 202, r.text
    assert [t["external_id"] for t in r.json()["tickets"]] == ["2391847765"]
    assert post_helpscout(hooks, HS_CREATED, "convo.created").json()["result"] == "duplicate"
    # The real reply, then the agent's answer resent as if it were a customer reply: the newest
    # customer thread it holds is the reply already stored, so nothing new is made or queued.
    assert post_helpscout(hooks, HS_REPLY, "convo.customer.reply.created").status_code == 202
    forged = post_helpscout(hooks, HS_AGENT, "convo.customer.reply.created")
    assert forged.status_code == 200, forged.text
    assert [(t["external_id"], t["queued"]) for t in forged.json()["tickets"]] == [
        ("2391847765/threads/7210512236", False)
    ]
    stored = tickets(engine)
    assert sorted(stored) == ["helpscout:2391847765", "helpscout:2391847765/threads/7210512236"]
    assert stored["helpscout:2391847765"].body.startswith("My order arrived yesterday")
    assert stored["helpscout:2391847765"].meta["number"] == 18342
    assert stored["helpscout:2391847765/threads/7210512236"].meta == {
        "thread": "2391847765",
        "kind": "reply",
    }


def test_helpscout_preview_stands_in_only_for_a_new_conversation(
    hooks: TestClient, engine: Engine
) -> None:
    # A later body whose only customer thread is empty: its preview is the agent's answer.
    convo = json.loads(HS_AGENT)
    threads = convo["_embedded"]["threads"]
    convo["_embedded"]["threads"] = [
        t | {"body": ""} for t in threads if t["type"] == "customer" and t["id"] == 7210398841
    ] + [t for t in threads if t["type"] == "message"]
    convo["preview"] = "Hi Hiro, the replacement shipped this morning"
    body = json.dumps(convo).encode()
    r = post_helpscout(hooks, body, "convo.customer.reply.created")
    assert r.status_code == 200 and r.json()["result"] == "ignored", r.text
    assert r.json()["reason"] == "the conversation has no customer text"
    assert count_rows(engine, "ticket") == 0


# --- Every credential header exactly once ---------------------------------------------------

# provider, fixture, the headers that must come once
ONCE = [
    ("zendesk", "ticket_created.json", "X-Zendesk-Webhook-Signature"),
    ("zendesk", "ticket_created.json", "X-Zendesk-Webhook-Signature-Timestamp"),
    ("front", "inbound.json", "X-Front-Signature"),
    ("front", "inbound.json", "X-Front-Request-Timestamp"),
    ("intercom", "conversation_user_created.json", "X-Hub-Signature"),
    ("helpscout", "convo.created.json", "X-HelpScout-Signature"),
    ("helpscout", "convo.created.json", "X-HelpScout-Event"),
    ("generic", "ticket.json", "X-Signature"),
    ("freshdesk", "ticket_created.json", "X-Webhook-Secret"),
    ("freshdesk", "ticket_created.json", "Authorization"),
]


def _twice(headers: dict[str, str], name: str, copy: str, *, real_first: bool) -> Any:
    """The headers as a list, `name` sent twice: its real value and `copy`."""
    pairs = [(k, v) for k, v in headers.items() if k != name]
    real = headers[name]
    return pairs + ([(name, real), (name, copy)] if real_first else [(name, copy), (name, real)])


@pytest.mark.parametrize(("provider", "name", "header"), ONCE)
@pytest.mark.parametrize("copy", ["same", "wrong-first", "wrong-last"])
def test_a_credential_header_sent_twice_is_401_and_nothing_stored(
    hooks: TestClient,
    engine: Engine,
    provider: str,
    name: str,
    header: str,
    copy: str,
) -> None:
    body = load(provider, name)
    headers = sign(provider, body, event="convo.created" if provider == "helpscout" else None)
    if header == "Authorization":  # Freshdesk's other way to send the secret
        secret = SECRETS["freshdesk"]
        headers[header] = "Basic " + base64.b64encode(f"fd:{secret}".encode()).decode()
    real = headers[header]
    value = real if copy == "same" else "garbage" + real[7:]
    pairs = _twice(headers, header, value, real_first=copy == "wrong-last")
    # Without the copy the delivery is good: the 401 is the repeat's, nothing else.
    r = hooks.post(f"/v1/webhooks/{provider}", content=body, headers=pairs)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "duplicate_header"
    assert header in r.json()["message"] and "exactly once" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "raw_delivery") == 0
    assert count_rows(engine, "webhook_event") == 0
    good = hooks.post(f"/v1/webhooks/{provider}", content=body, headers=headers)
    assert good.status_code == 202, good.text


# --- One reading of a signed body -----------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        # A trigger template with a value spliced in unescaped: the second "id" wins in Python.
        ("zendesk", b'{"ticket": {"id": "48790", "subject": "Hi", "description": "x", '
                    b'"id": "1"}}'),
        ("generic", b'{"source": "email", "external_id": "a-1", "body": "hello", '
                    b'"metadata": {"k": 1, "k": 2}}'),
        ("intercom", b'{"topic": "conversation.user.created", "topic": "ping", "data": {}}'),
    ],
)  # fmt: skip
def test_a_key_twice_in_one_object_is_422_and_nothing_stored(
    hooks: TestClient,
    engine: Engine,
    provider: str,
    body: bytes,
) -> None:
    r = hooks.post(f"/v1/webhooks/{provider}", content=body, headers=sign(provider, body))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "duplicate_key" and "send each key once" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "webhook_event") == 0


def test_a_long_signed_event_id_is_kept_as_its_hash(
    hooks: TestClient,
    engine: Engine,
) -> None:
    long_id = "evt-" + "x" * 300
    body = json.dumps(
        {"event_id": long_id, "source": "email", "external_id": "e-1", "body": "Refund please"}
    ).encode()
    r = hooks.post("/v1/webhooks/generic", content=body, headers=sign("generic", body))
    assert r.status_code == 202, r.text
    expected = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    assert r.json()["event_id"] == expected
    assert event_ids(engine) == [("generic", expected, "ticket")]
    again = hooks.post("/v1/webhooks/generic", content=body, headers=sign("generic", body))
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
