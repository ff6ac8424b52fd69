"""Times at the calendar's edges: one accepted range (app.core.clock), a 422 naming it for
requests, the received time for a helpdesk's unusable time, and never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.core import clock
from app.core.config import Settings
from app.ingest.providers.base import parse_time
from app.main import create_app
from app.nlp.analyzer import Analyzer
from app.tickets.models import Ticket
from tests.conftest import FIXTURES
from tests.helpers import count_rows
from tests.ingest.test_webhooks import secret_settings, sign

# Each answered 500 before: a UTC offset at year 1 or 9999 cannot even be converted to UTC.
OUT_OF_RANGE = [
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "3000-01-01T00:00:00Z",
    "Fri Dec 31 23:59:59 -0500 9999",  # Twitter's format
    "Mon Jan 01 00:00:00 +2359 0001",
    "Fri, 31 Dec 9999 23:59:59 -0500",  # RFC 2822
]


# ---- the range itself -----------------------------------------------------------------------


def test_the_range_and_its_edges() -> None:
    assert clock.RANGE_TEXT == "1970-01-01T00:00:00Z to 2999-12-31T23:59:59Z"
    first, last = datetime(1970, 1, 1, tzinfo=UTC), datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert clock.to_utc(first) == first and clock.to_utc(last) == last
    # An offset moves a time across the edge: 1970-01-01T04:00+05:00 is 1969 in UTC.
    east = timezone(timedelta(hours=5))
    assert not clock.in_range(datetime(1970, 1, 1, 4, tzinfo=east))
    assert clock.to_utc(datetime(1970, 1, 1, 6, tzinfo=east)) == datetime(1970, 1, 1, 1, tzinfo=UTC)
    assert clock.to_utc(datetime(2026, 5, 1, 12)) == datetime(2026, 5, 1, 12, tzinfo=UTC)
    for edge in (
        datetime(1, 1, 1, tzinfo=east),
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=5))),
    ):
        assert not clock.in_range(edge) and clock.to_utc_or_none(edge) is None
        with pytest.raises(clock.TimeOutOfRange, match="1970-01-01T00:00:00Z to 2999"):
            clock.to_utc(edge)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1_763_632_245, datetime(2025, 11, 20, 9, 50, 45, tzinfo=UTC)),
        (-1, None),
        (32_503_680_000, None),  # 3000-01-01
        (1e300, None),
        (float("inf"), None),
        (float("-inf"), None),
        (float("nan"), None),
    ],
)
def test_unix_times(seconds: float, expected: datetime | None) -> None:
    assert clock.from_unix(seconds) == expected


@pytest.mark.parametrize(
    "value",
    [
        10**20,
        10**400,  # float() of it overflows
        -5_000_000_000_000,
        float("nan"),
        float("inf"),
        "9" * 400,
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "1960-06-01T00:00:00Z",
        "²",  # a digit to str.isdigit, not to int()
        "yesterday",
    ],
)
def test_a_helpdesk_time_out_of_range_is_absent(value: Any) -> None:
    assert parse_time(value) is None


def test_helpdesk_times_in_range() -> None:
    assert parse_time(1_763_632_245) == datetime(2025, 11, 20, 9, 50, 45, tzinfo=UTC)
    assert parse_time(1_763_645_407_905) == datetime(2025, 11, 20, 13, 30, 7, 905000, tzinfo=UTC)
    assert parse_time("2026-11-20T09:14:03+01:00") == datetime(2026, 11, 20, 8, 14, 3, tzinfo=UTC)
    assert parse_time(" 1763632245 ") == datetime(2025, 11, 20, 9, 50, 45, tzinfo=UTC)


# ---- tickets and posts ----------------------------------------------------------------------


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_tickets_out_of_range_are_refused(client: TestClient, engine: Engine, when: str) -> None:
    good = {"source": "api", "external_id": "ok-1", "body": "The app crashes on export."}
    bad = {"source": "api", "external_id": "edge-1", "body": "Sync fails.", "created_at": when}
    r = client.post("/v1/tickets", json=[good, bad])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "validation_error"
    assert "1970-01-01T00:00:00Z to 2999-12-31T23:59:59Z" in body["message"]
    assert body["details"][0]["field"] == "1.created_at"
    # Nothing from the batch is stored, not even its good item.
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "raw_delivery") == 0


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_posts_out_of_range_are_refused(client: TestClient, engine: Engine, when: str) -> None:
    post = {"platform": "twitter", "id": "185500", "text": "flight delayed", "created_at": when}
    r = client.post("/v1/posts", json=post)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert "out of range" in r.json()["message"] and "2999-12-31T23:59:59Z" in r.json()["message"]
    assert count_rows(engine, "ticket") == 0 and count_rows(engine, "raw_delivery") == 0


def test_a_year_of_twenty_digits_is_a_validation_error(client: TestClient, engine: Engine) -> None:
    # The RFC 2822 parser overflows on it instead of saying it is not a date.
    when = "Tue, 31 Oct 99999999999999999999 22:11:45 +0000"
    r = client.post("/v1/tickets", json={"source": "api", "external_id": "x", "body": "hi there",
                                         "created_at": when})  # fmt: skip
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "created_at"
    assert count_rows(engine, "ticket") == 0


def test_the_edges_of_the_range_are_stored(client: TestClient) -> None:
    items = [
        {"source": "api", "external_id": "first", "body": "Old mail.",
         "created_at": "1970-01-01T05:00:00+05:00"},
        {"source": "api", "external_id": "last", "body": "Far future.",
         "created_at": "Tue Dec 31 23:59:59 +0000 2999"},
    ]  # fmt: skip
    r = client.post("/v1/tickets", json=items)
    assert r.status_code == 202, r.text
    ids = [item["id"] for item in r.json()["data"]]
    first, last = (client.get(f"/v1/tickets/{i}").json() for i in ids)
    assert first["created_at"] == "1970-01-01T00:00:00Z"
    assert last["created_at"] == "2999-12-31T23:59:59Z"


# ---- query parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("param", ["received_from", "received_to"])
@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "0001-01-01", "1969-07-20"]
)
def test_ticket_list_times_out_of_range(client: TestClient, param: str, value: str) -> None:
    r = client.get("/v1/tickets", params={param: value})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "validation_error" and body["details"][0]["field"] == f"query.{param}"
    assert "1970-01-01T00:00:00Z to 2999-12-31T23:59:59Z" in body["message"]


def test_ticket_list_times_in_range_filter(client: TestClient) -> None:
    client.post("/v1/tickets", json={"source": "api", "external_id": "a", "body": "Export fails."})
    now = datetime.now(UTC)
    inside = client.get(
        "/v1/tickets",
        params={"received_from": "1970-01-01T00:00:00Z", "received_to": "2999-12-31T23:59:59Z"},
    ).json()
    assert inside["count"] == 1 and inside["data"][0]["external_id"] == "a"
    later = (now + timedelta(hours=1)).isoformat()
    assert client.get("/v1/tickets", params={"received_from": later}).json()["count"] == 0
    # An offset is honoured: the same instant written in UTC+05:00.
    east = (now - timedelta(minutes=5)).astimezone(timezone(timedelta(hours=5))).isoformat()
    assert client.get("/v1/tickets", params={"received_from": east}).json()["count"] == 1


# ---- helpdesk deliveries --------------------------------------------------------------------


@pytest.fixture
def hook_client(make_settings: Callable[..., Settings], analyzer: Analyzer) -> Iterator[TestClient]:
    """The app with every provider's secret configured and no API key sent."""
    app = create_app(make_settings(**secret_settings()), analyzer=analyzer)
    with TestClient(app) as c:
        yield c


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *steps, last = path.split(".")
    node: Any = data
    for step in steps:
        node = node[int(step)] if step.isdigit() else node[step]
    node[last] = value


# provider, fixture, Help Scout event, the time fields set out of range, the stored ticket
DELIVERIES = [
    ("intercom", "conversation_user_created", None,
     {"data.item.created_at": 10**20, "data.item.updated_at": -1}, "intercom:215468831457902"),
    ("front", "inbound", None,
     {"target.data.created_at": -5e12, "emitted_at": "1e400"},
     "front:cnv_a8h2k4m/messages/msg_5tq8r1z"),
    ("zendesk", "ticket_created", None,
     {"detail.created_at": "0001-01-01T00:00:00+05:00",
      "detail.updated_at": "9999-12-31T23:59:59-05:00"}, "zendesk:48213"),
    ("freshdesk", "ticket_created", None,
     {"freshdesk_webhook.ticket_created_at": "9999-12-31T23:59:59-05:00"}, "freshdesk:90412"),
    ("helpscout", "convo.created", "convo.created",
     {"createdAt": "0001-01-01T00:00:00+05:00", "userUpdatedAt": 1e300,
      "_embedded.threads.0.createdAt": "0001-01-01T00:00:00+05:00"}, "helpscout:2391847765"),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "name", "event", "fields", "key"), DELIVERIES)
def test_helpdesk_times_out_of_range_fall_back_to_the_received_time(
    hook_client: TestClient,
    engine: Engine,
    provider: str,
    name: str,
    event: str | None,
    fields: dict[str, Any],
    key: str,
) -> None:
    data = json.loads((FIXTURES / "webhooks" / provider / f"{name}.json").read_text())
    for path, value in fields.items():
        _set(data, path, value)
    # "1e400" is written as a bare number: Python's JSON reader makes it an infinite float.
    body = json.dumps(data).replace('"1e400"', "1e400").encode()
    before = datetime.now(UTC)
    r = hook_client.post(
        f"/v1/webhooks/{provider}", content=body, headers=sign(provider, body, event=event)
    )
    after = datetime.now(UTC)
    assert r.status_code in (200, 202), r.text
    assert r.json()["result"] == "stored"
    with Session(engine) as s:
        stored = {f"{t.source}:{t.external_id}": t for t in s.exec(select(Ticket)).all()}
    ticket = stored[key]
    assert before - timedelta(seconds=1) <= ticket.created_at <= after + timedelta(seconds=1)
    assert ticket.created_at == ticket.received_at
    assert "source_updated_at" not in (ticket.meta or {})


# ---- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_requeue_refuses_times_out_of_range(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["requeue", "--received-from", value])
    assert exit_.value.code == 2  # a usage error, before the database is opened
    err = capsys.readouterr().err
    assert "--received-from" in err and "1970-01-01T00:00:00Z to 2999-12-31T23:59:59Z" in err
