"""POST /v1/tickets through the real app and database."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.core.config import Settings
from app.enrich.worker import Worker
from app.ingest import service as ingest_service
from app.ingest.models import RawDelivery
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.tickets.models import Ticket, TicketAnalysis
from tests.helpers import AUTH, count_rows, tickets_by_status


def post(client: TestClient, payload: Any) -> Any:
    return client.post("/v1/tickets", json=payload)


def test_single_item_is_stored_with_normalised_fields(client: TestClient, engine: Engine) -> None:
    item = {
        "source": "Twitter",
        "external_id": "1850000000000000001",
        "body": "  @ShopNest where is my parcel? 10 days late  ",
        "author": "@Some_User",
        "created_at": "2026-11-01T10:00:00+02:00",
        "metadata": {"lang_hint": "en", "followers": 12},
    }
    raw = json.dumps(item).encode()
    r = client.post("/v1/tickets", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 202
    body = r.json()
    assert body["count"] == 1 and body["created"] == 1
    assert body["data"][0]["result"] == "created" and body["data"][0]["queued"] is True
    tid = body["data"][0]["id"]

    with Session(engine) as s:
        t = s.get(Ticket, tid)
        assert t is not None
        assert t.source == "twitter"  # source names are case-insensitive
        assert t.channel == "social"  # from the source
        assert t.body == "@ShopNest where is my parcel? 10 days late"
        assert t.status == "pending" and t.revision == 1
        assert t.created_at.isoformat() == "2026-11-01T08:00:00+00:00"
        assert t.meta == {"lang_hint": "en", "followers": 12}
        # The author is kept only as a salted hash, case-insensitively.
        expected = hmac.new(b"test-salt", b"@some_user", hashlib.sha256).hexdigest()
        assert t.author_hash == expected
        delivery = s.get(RawDelivery, t.raw_delivery_id)
        assert delivery is not None
        assert delivery.payload is None  # the body is not kept: it carries personal data
        assert delivery.kind == "api" and delivery.size_bytes == len(raw)
        assert delivery.sha256 == hashlib.sha256(raw).hexdigest()


def test_batch_keeps_order_and_ids(client: TestClient, sample_items: list[dict]) -> None:
    r = post(client, sample_items)
    assert r.status_code == 202
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(sample_items)))
    assert [d["external_id"] for d in data] == [i["external_id"] for i in sample_items]
    assert len({d["id"] for d in data}) == len(sample_items)
    assert r.json()["created"] == len(sample_items)


def test_repeat_delivery_stores_nothing_new(client: TestClient, engine: Engine) -> None:
    item = {"source": "zendesk", "external_id": "42", "subject": "Hi", "body": "App crashes"}
    first = post(client, item).json()["data"][0]
    deliveries = count_rows(engine, "raw_delivery")
    r = post(client, item)
    assert r.status_code == 200  # nothing new: acknowledged, not queued
    again = r.json()["data"][0]
    assert again["id"] == first["id"]
    assert again["result"] == "unchanged" and again["queued"] is False
    assert count_rows(engine, "ticket") == 1
    assert count_rows(engine, "raw_delivery") == deliveries


def test_repeat_with_zoneless_created_at_is_unchanged(client: TestClient, engine: Engine) -> None:
    item = {
        "source": "email",
        "external_id": "tz",
        "body": "Refund?",
        "created_at": "2026-11-01T10:00:00",
    }
    post(client, item)
    again = post(client, {**item, "created_at": "2026-11-01T11:00:00+01:00"}).json()["data"][0]
    assert again["result"] == "unchanged"
    with Session(engine) as s:
        assert s.exec(select(Ticket)).one().created_at.isoformat() == "2026-11-01T10:00:00+00:00"


def test_integer_external_id_is_the_same_id_as_its_digits(client: TestClient) -> None:
    a = post(client, {"source": "zendesk", "external_id": 7, "body": "Login fails"}).json()
    b = post(client, {"source": "zendesk", "external_id": "7", "body": "Login fails"}).json()
    assert a["data"][0]["id"] == b["data"][0]["id"]
    assert b["data"][0]["result"] == "unchanged"


def test_same_external_id_in_other_source_is_another_ticket(client: TestClient) -> None:
    a = post(client, {"source": "zendesk", "external_id": "1", "body": "x crashes"}).json()
    b = post(client, {"source": "freshdesk", "external_id": "1", "body": "x crashes"}).json()
    assert a["data"][0]["id"] != b["data"][0]["id"]


def test_changed_body_updates_and_requeues(
    client: TestClient, engine: Engine, worker: Worker
) -> None:
    item = {"source": "intercom", "external_id": "c1", "body": "The export button does nothing"}
    tid = post(client, item).json()["data"][0]["id"]
    worker.drain()
    with Session(engine) as s:
        assert s.get(Ticket, tid).status == "done"  # type: ignore[union-attr]
        assert s.get(TicketAnalysis, tid) is not None

    item["body"] = "Update: now I was also charged twice for the plan"
    r = post(client, item)
    assert r.status_code == 202
    res = r.json()["data"][0]
    assert res == {**res, "id": tid, "result": "updated", "queued": True}
    with Session(engine) as s:
        t = s.get(Ticket, tid)
        assert t is not None and t.status == "pending" and t.revision == 2
        assert t.body == item["body"]
        # The old analysis described the old text and is gone until the worker runs again.
        assert s.get(TicketAnalysis, tid) is None
    assert count_rows(engine, "ticket") == 1
    worker.drain()
    ticket = client.get(f"/v1/tickets/{tid}").json()
    assert ticket["status"] == "done" and ticket["revision"] == 2
    assert ticket["analysis"]["uxcx"]["label"] == "CX"


def test_metadata_only_change_updates_without_requeue(
    client: TestClient, engine: Engine, worker: Worker
) -> None:
    item = {"source": "front", "external_id": "m1", "body": "Router light is red", "metadata": {}}
    tid = post(client, item).json()["data"][0]["id"]
    worker.drain()
    item["metadata"] = {"priority": "high"}
    res = post(client, item).json()["data"][0]
    assert res["result"] == "updated" and res["queued"] is False
    with Session(engine) as s:
        t = s.get(Ticket, tid)
        assert t is not None and t.status == "done" and t.meta == {"priority": "high"}


def test_duplicates_inside_one_batch_become_one_ticket(client: TestClient, engine: Engine) -> None:
    item = {"source": "email", "external_id": "dup", "body": "Parcel missing"}
    changed = {**item, "body": "Parcel missing, and no answer from support"}
    r = post(client, [item, item, changed]).json()
    ids = {d["id"] for d in r["data"]}
    assert len(ids) == 1
    assert [d["result"] for d in r["data"]] == ["created", "unchanged", "updated"]
    assert count_rows(engine, "ticket") == 1
    with Session(engine) as s:
        assert s.exec(select(Ticket)).one().body == changed["body"]


def test_concurrent_identical_deliveries_store_one_ticket(
    client: TestClient, engine: Engine
) -> None:
    batch = [
        {"source": "zendesk", "external_id": f"race-{i}", "body": f"Issue {i}"} for i in range(20)
    ]
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        statuses.append(post(client, batch).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whoever stored first got 202; later copies are repeats (200). Never an error.
    assert len(statuses) == 4 and set(statuses) <= {200, 202} and 202 in statuses
    assert count_rows(engine, "ticket") == 20
    assert tickets_by_status(engine) == {"pending": 20}


def test_nul_characters_and_lone_surrogates_are_cleaned(client: TestClient, engine: Engine) -> None:
    raw = b'{"source":"api","external_id":"n1","body":"bad\\u0000byte \\ud800 here"}'
    r = client.post("/v1/tickets", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 202
    with Session(engine) as s:
        assert s.exec(select(Ticket)).one().body == "badbyte \ufffd here"


def test_ids_with_lone_surrogates_are_refused_not_merged(
    client: TestClient, engine: Engine
) -> None:
    # "\ud800" and "\ud801" once both became "?": two different ids, one ticket.
    for n, surrogate in enumerate(("\\ud800", "\\ud801")):
        raw = f'{{"source":"api","external_id":"id-{surrogate}","body":"text {n}"}}'.encode()
        r = client.post("/v1/tickets", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "invalid_id"
    assert count_rows(engine, "ticket") == 0


@pytest.mark.parametrize("body", ["\u200b\u200c\u200d", "\ufeff \u2060\u200e", "\x07\x1b\u200b"])
def test_invisible_only_bodies_are_empty(client: TestClient, engine: Engine, body: str) -> None:
    r = client.post("/v1/tickets", json={"source": "api", "external_id": "z1", "body": body})
    assert r.status_code == 422
    assert r.json()["code"] == "empty_text"
    assert "invisible" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0


def test_metadata_nested_too_deep_is_refused(client: TestClient, engine: Engine) -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    item = {"source": "api", "external_id": "deep", "body": "crash", "metadata": deep}
    r = client.post("/v1/tickets", json=item)
    assert r.status_code == 422
    assert r.json()["code"] == "metadata_too_deep"
    assert count_rows(engine, "ticket") == 0
    # 32 levels is within the limit and reads back whole.
    ok: dict[str, object] = {}
    node = ok
    for _ in range(31):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    item = {"source": "api", "external_id": "ok", "body": "crash", "metadata": ok}
    tid = client.post("/v1/tickets", json=item).json()["data"][0]["id"]
    assert client.get(f"/v1/tickets/{tid}").json()["metadata"] == ok


def test_a_deep_row_stored_before_the_limit_is_served_clipped(
    client: TestClient, engine: Engine
) -> None:
    tid = client.post(
        "/v1/tickets", json={"source": "api", "external_id": "old", "body": "crash"}
    ).json()["data"][0]["id"]
    deep: dict[str, object] = {}
    node = deep
    for _ in range(400):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with Session(engine) as s:
        ticket = s.get(Ticket, tid)
        assert ticket is not None
        ticket.meta = deep
        s.add(ticket)
        s.commit()
    one = client.get(f"/v1/tickets/{tid}")
    assert one.status_code == 200
    clipped = one.json()["metadata"]
    for _ in range(31):
        clipped = clipped["a"]
    assert clipped == {"a": "[too deep]"}
    listing = client.get("/v1/tickets")
    assert listing.status_code == 200 and listing.json()["count"] >= 1


def test_large_bodies_are_prepared_off_the_event_loop(
    make_settings: Callable[..., Settings],
    analyzer: Analyzer,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 17: a 0.4 MB batch of "a.a.a" was parsed and redacted on the event loop and every
    # other request waited. Over INLINE_BODY_BYTES the work runs in a worker thread.
    threads: list[str] = []
    original = ingest_service.prepare

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(ingest_service, "prepare", spy)
    app = create_app(make_settings(inline_body_bytes=2_000), analyzer=analyzer)
    with TestClient(app, headers=AUTH) as c:

        async def loop_thread() -> str:
            return threading.current_thread().name

        loop_name = c.portal.call(loop_thread)  # type: ignore[union-attr]
        small = c.post("/v1/tickets", json={"source": "api", "external_id": "s", "body": "hi"})
        big = c.post(
            "/v1/tickets", json={"source": "api", "external_id": "b", "body": "a." * 5_000}
        )
    assert small.status_code == 202 and big.status_code == 202
    assert threads[0] == loop_name
    assert threads[1] != loop_name
    assert count_rows(engine, "ticket") == 2
