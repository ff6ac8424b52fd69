"""Digest delivery: Slack (a local webhook receiver) and e-mail (a local SMTP server), retries
with backoff until failed, and the weekly schedule (due weeks, idempotent runs, the worker)."""

from __future__ import annotations

import email
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.core import retry
from app.core.config import Settings
from app.core.db import utcnow
from app.digests import delivery, schedule
from app.digests.models import StoredDigest
from app.digests.render import render_html, render_markdown
from app.digests.schemas import (
    Digest,
    DigestCluster,
    DigestRules,
    DigestWeek,
    Headline,
    Quote,
    TeamSection,
)
from app.digests.service import RULES
from app.digests.weeks import IsoWeek
from app.enrich.worker import Worker
from app.nlp.analyzer import Analyzer
from app.routing.table import RoutingTable

LINK = "https://issuelens.example.com"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


# ---- a small hand-made digest ---------------------------------------------------------------


def _cluster(cid: int, title: str, label: str, team: str, count: int, previous: float) -> Any:
    week = IsoWeek.parse("2026-W47")
    weeks = week.span(8)
    return DigestCluster(
        id=cid,
        title=title,
        key_phrases=["checkout", "safari"],
        label=label,
        team=team,
        count=count,
        previous_mean=previous,
        growth=round(count / previous, 2) if previous else None,
        trend=[0, 0, 0, 0, 1, 2, 3, count],
        trend_weeks=[str(w) for w in weeks],
        negative_share=0.8,
        mean_sentiment=-0.6,
        first_seen=week.start - timedelta(weeks=6),
        quotes=[
            Quote(
                ticket_id=cid * 10,
                text=f"{title}, again.",
                source="email",
                channel="ticket",
                created_at=week.start + timedelta(days=2),
                sentiment="negative",
            )
        ],
    )


def make_digest(week: str = "2026-W47", team: str | None = None) -> Digest:
    iso = IsoWeek.parse(week)
    checkout = _cluster(1, "Checkout fails on Safari", "UX", "product-engineering", 42, 10.0)
    refunds = _cluster(2, "Refunds & <credits> missing", "CX", "billing", 17, 0.0)
    login = _cluster(3, "Login loops after update", "UX", "product-engineering", 9, 3.0)
    rules: DigestRules = RULES
    return Digest(
        week=str(iso),
        start=iso.start,
        end=iso.end,
        team=team,
        generated_at=iso.end + timedelta(hours=8),
        headline=Headline(
            messages=1234,
            previous_messages=1000,
            change=0.234,
            negative_share=0.37,
            ux_share=0.55,
            cx_share=0.3,
            none_share=0.15,
        ),
        weekly=[
            DigestWeek(
                week=str(w),
                messages=100,
                ux=50,
                cx=30,
                none=15,
                unlabelled=5,
                negative_share=0.3,
                mean_sentiment=-0.2,
            )
            for w in iso.span(8)
        ],
        top=[checkout, refunds, login],
        rising=[checkout],
        new=[refunds],
        quiet=[],
        teams=[
            TeamSection(team="product-engineering", messages=51, clusters=[1, 3]),
            TeamSection(team="billing", messages=17, clusters=[2]),
        ],
        rules=rules,
    )


def store(engine: Engine, digest: Digest, *, trigger: str = "api") -> int:
    """Keep a digest the way the service does; its id."""
    with Session(engine, expire_on_commit=False) as session:
        row = StoredDigest(
            week=digest.week,
            team=digest.team,
            trigger=trigger,
            payload=json.loads(digest.model_dump_json()),
            markdown=render_markdown(digest),
            html=render_html(digest, link=LINK),
            generated_at=digest.generated_at,
        )
        session.add(row)
        session.commit()
        assert row.id is not None
        return row.id


def _next_attempt(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["next_attempt_at"])


def stored(engine: Engine) -> list[StoredDigest]:
    with Session(engine) as session:
        return list(session.exec(select(StoredDigest).order_by(col(StoredDigest.id))).all())


# ---- local receivers ------------------------------------------------------------------------


class SlackReceiver:
    """An HTTP server on 127.0.0.1 standing in for a Slack incoming webhook."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"].startswith("application/json")
                receiver.payloads.append(json.loads(body))
                answer = b"ok" if receiver.status == 200 else b"internal_error"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/x"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Collector:
    """An aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                email.message_from_bytes(
                    envelope.content, _class=EmailMessage, policy=policy.default
                ),
            )
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    r = SlackReceiver()
    yield r
    r.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Collector]]:
    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, collector
    controller.stop()


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Warnings(logging.Handler):
    """Collects the app.digests WARNING lines (pytest's logging plugin may be off)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_log() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("app.digests")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


# ---- Slack ----------------------------------------------------------------------------------


def test_slack_message_is_block_kit_with_escaped_text() -> None:
    message = delivery.slack_message(make_digest(team="billing"), f"{LINK}/digests/7")
    blocks = message["blocks"]
    assert [b["type"] for b in blocks] == [
        "header",
        "section",
        "divider",
        "section",
        "section",
        "section",
        "context",
        "actions",
    ]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": "Weekly issues digest 2026-W47 · team billing",
        "emoji": True,
    }
    numbers = blocks[1]["text"]["text"]
    assert "*1234* messages (+23% vs 1000 the week before)" in numbers
    assert "*37%* negative" in numbers and "UX 55% · CX 30% · no problem 15%" in numbers
    rising, new, top = (blocks[i]["text"]["text"] for i in (3, 4, 5))
    assert rising.startswith("*Rising*\n")
    assert "• *Checkout fails on Safari* · UX · product-engineering · 42 this week · 4.2x" in rising
    # User text is escaped the way Slack wants; Slack's own markup (<url>) is not.
    assert (
        "*Refunds &amp; &lt;credits&gt; missing* · CX · billing · 17 this week · new volume" in new
    )
    assert "<credits>" not in json.dumps(message)
    assert top.count("\n• ") == 3 and "Login loops after update" in top
    (button,) = blocks[-1]["elements"]
    assert button["type"] == "button" and button["url"] == f"{LINK}/digests/7"
    assert button["text"]["text"] == "Read the full digest"
    assert "16 Nov 2026 to 23 Nov 2026 (UTC)" in blocks[6]["elements"][0]["text"]
    assert message["text"].startswith("Weekly issues digest 2026-W47 · team billing: 1234 messages")
    assert message["text"].endswith(f"<{LINK}/digests/7>")


def test_slack_message_caps_each_section_at_five() -> None:
    digest = make_digest()
    many = [
        _cluster(100 + i, f"Issue {i}", "UX", "product-engineering", 50 - i, 5.0) for i in range(8)
    ]
    digest = digest.model_copy(update={"top": many, "rising": [], "new": []})
    blocks = delivery.slack_message(digest, LINK)["blocks"]
    rising, new, top = (blocks[i]["text"]["text"] for i in (3, 4, 5))
    assert "_Nothing is growing past its 4-week mean._" in rising
    assert "_No new recurring issue._" in new
    assert [line.split("*")[1] for line in top.splitlines()[1:]] == [f"Issue {i}" for i in range(5)]


def test_slack_delivery_reaches_the_webhook(
    engine: Engine, make_settings: Callable[..., Settings], slack: SlackReceiver
) -> None:
    settings = make_settings(digest_slack_webhook_url=slack.url, digest_link_base=LINK + "/")
    digest_id = store(engine, make_digest())
    result = delivery.deliver(engine, digest_id, settings)
    assert set(result) == {"slack"}
    entry = result["slack"]
    assert entry["status"] == "delivered" and entry["attempts"] == 1
    assert entry["error"] is None and entry["next_attempt_at"] is None
    assert abs(datetime.fromisoformat(entry["at"]) - utcnow()) < timedelta(minutes=1)
    (payload,) = slack.payloads
    assert payload["blocks"][0]["text"]["text"] == "Weekly issues digest 2026-W47"
    assert "*1234* messages" in payload["blocks"][1]["text"]["text"]
    text = json.dumps(payload)
    for title in ("Checkout fails on Safari", "Refunds &amp; &lt;credits&gt; missing"):
        assert title in text
    assert payload["blocks"][-1]["elements"][0]["url"] == f"{LINK}/digests/{digest_id}"
    (row,) = stored(engine)
    assert row.delivery == result
    # Delivered channels are not sent again.
    assert delivery.deliver(engine, digest_id, settings) == result
    assert len(slack.payloads) == 1


def test_slack_failures_retry_with_backoff_then_fail_then_a_manual_retry_delivers(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    warnings_log: Warnings,
) -> None:
    settings = make_settings(
        digest_slack_webhook_url=slack.url, digest_max_attempts=3, digest_retry_backoff_s=60
    )
    digest_id = store(engine, make_digest())
    slack.status = 500

    entry = delivery.deliver(engine, digest_id, settings, now=NOW)["slack"]
    second = _next_attempt(entry)
    assert entry == {
        "status": "pending",
        "attempts": 1,
        "error": "HTTP 500: internal_error",
        "at": NOW.isoformat(),
        "next_attempt_at": second.isoformat(),
    }
    # DIGEST_RETRY_BACKOFF_S, +-20% jitter.
    assert NOW + timedelta(seconds=48) <= second <= NOW + timedelta(seconds=72)
    # Not due yet: nothing is sent.
    assert delivery.retry_due(engine, settings, second - timedelta(seconds=1)) == {}
    assert len(slack.payloads) == 1

    entry = delivery.retry_due(engine, settings, second)[digest_id]["slack"]
    assert entry["status"] == "pending" and entry["attempts"] == 2
    third = _next_attempt(entry)
    # Doubled: 120 s, +-20%.
    assert second + timedelta(seconds=96) <= third <= second + timedelta(seconds=144)
    assert warnings_log.records == []

    entry = delivery.retry_due(engine, settings, third)[digest_id]["slack"]
    assert entry == {
        "status": "failed",
        "attempts": 3,
        "error": "HTTP 500: internal_error",
        "at": third.isoformat(),
        "next_attempt_at": None,
    }
    (record,) = warnings_log.records
    assert record.levelno == logging.WARNING
    assert "slack" in record.getMessage() and "HTTP 500" in record.getMessage()
    assert record.__dict__["channel"] == "slack" and record.__dict__["error"] == entry["error"]
    # Failed for good: the retry loop leaves it alone.
    assert delivery.retry_due(engine, settings, third + timedelta(days=30)) == {}
    assert len(slack.payloads) == 3

    slack.status = 200
    entry = delivery.deliver(engine, digest_id, settings, channels=["slack"])["slack"]
    assert entry["status"] == "delivered" and entry["attempts"] == 1 and entry["error"] is None
    assert len(slack.payloads) == 4
    assert stored(engine)[0].delivery["slack"]["status"] == "delivered"


def test_unreachable_slack_is_recorded(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        digest_slack_webhook_url=f"http://127.0.0.1:{free_port()}/hook", digest_max_attempts=1
    )
    digest_id = store(engine, make_digest())
    entry = delivery.deliver(engine, digest_id, settings)["slack"]
    assert entry["status"] == "failed" and entry["attempts"] == 1
    assert "Connection refused" in entry["error"] or "URLError" in entry["error"]


def test_deliver_refuses_unknown_channels_and_ids(
    engine: Engine, make_settings: Callable[..., Settings], slack: SlackReceiver
) -> None:
    from app.core.errors import InvalidInput, NotFound

    settings = make_settings(digest_slack_webhook_url=slack.url)
    with pytest.raises(InvalidInput):
        delivery.deliver(engine, 1, settings, channels=["fax"])
    with pytest.raises(NotFound):
        delivery.deliver(engine, 999, settings)
    # Nothing configured: nothing sent, nothing recorded.
    digest_id = store(engine, make_digest())
    assert delivery.deliver(engine, digest_id, make_settings()) == {}
    assert slack.payloads == []


# ---- e-mail ---------------------------------------------------------------------------------


def test_email_delivery_sends_text_and_html(
    engine: Engine,
    make_settings: Callable[..., Settings],
    smtp: tuple[Controller, Collector],
) -> None:
    controller, collector = smtp
    settings = make_settings(
        digest_email_to="support-leads@example.com, cto@example.com",
        digest_email_from="IssueLens <digests@issuelens.example.com>",
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        digest_link_base=LINK,
    )
    digest_id = store(engine, make_digest(team="product-engineering"))
    result = delivery.deliver(engine, digest_id, settings)
    assert set(result) == {"email"}
    assert result["email"]["status"] == "delivered" and result["email"]["attempts"] == 1

    ((mail_from, rcpt_tos, message),) = collector.messages
    assert mail_from == "digests@issuelens.example.com"
    assert rcpt_tos == ["support-leads@example.com", "cto@example.com"]
    assert message["Subject"] == "Weekly issues digest 2026-W47 · team product-engineering"
    assert message["To"] == "support-leads@example.com, cto@example.com"
    assert message["From"] == "IssueLens <digests@issuelens.example.com>"
    assert message["Date"] and message["Message-ID"].endswith("@issuelens.example.com>")
    assert message.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Weekly issues digest: 2026-W47 · team product-engineering" in text
    assert "Checkout fails on Safari" in text and "**" not in text
    assert f"Read the full digest: {LINK}/digests/{digest_id}" in text
    assert "<h1>Weekly issues digest: 2026-W47 · team product-engineering</h1>" in html
    assert "Checkout fails on Safari" in html and f'href="{LINK}/clusters/1"' in html


def test_unreachable_smtp_is_pending_then_failed(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    warnings_log: Warnings,
) -> None:
    settings = make_settings(
        digest_slack_webhook_url=slack.url,
        digest_email_to="ops@example.com",
        smtp_port=free_port(),
        digest_max_attempts=2,
        digest_retry_backoff_s=30,
    )
    digest_id = store(engine, make_digest())
    result = delivery.deliver(engine, digest_id, settings, now=NOW)
    # One channel failing does not hold the other back.
    assert result["slack"]["status"] == "delivered"
    assert result["email"]["status"] == "pending" and result["email"]["attempts"] == 1
    assert "ConnectionRefusedError" in result["email"]["error"]
    due = _next_attempt(result["email"])
    assert NOW + timedelta(seconds=24) <= due <= NOW + timedelta(seconds=36)

    later = NOW + timedelta(minutes=5)
    result = delivery.retry_due(engine, settings, later)[digest_id]
    assert result["email"]["status"] == "failed" and result["email"]["attempts"] == 2
    assert result["slack"]["attempts"] == 1 and len(slack.payloads) == 1
    (record,) = warnings_log.records
    assert "email" in record.getMessage() and "ConnectionRefusedError" in record.getMessage()


def test_send_email_refused_recipient_is_a_delivery_error(
    make_settings: Callable[..., Settings],
) -> None:
    class Refusing(Collector):
        async def handle_RCPT(  # noqa: N802
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            return "550 5.1.1 no such user"

    controller = Controller(Refusing(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = make_settings(digest_email_to="nobody@example.com", smtp_port=controller.port)
        with pytest.raises(delivery.DeliveryError, match="nobody@example.com"):
            delivery.send_email(settings, subject="s", html="<p>h</p>", text="t")
    finally:
        controller.stop()


# ---- one backoff, rows that fail alone ------------------------------------------------------


def test_retries_wait_what_core_retry_backoff_says(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_backoff(*args: Any, **kwargs: Any) -> float:
        calls.append(args)
        return 7.0

    monkeypatch.setattr(retry, "backoff", fake_backoff)
    settings = make_settings(digest_slack_webhook_url=slack.url, digest_retry_backoff_s=45)
    digest_id = store(engine, make_digest())
    slack.status = 500
    entry = delivery.deliver(engine, digest_id, settings, now=NOW)["slack"]
    assert entry["next_attempt_at"] == (NOW + timedelta(seconds=7)).isoformat()
    later = NOW + timedelta(seconds=7)
    entry = delivery.retry_due(engine, settings, later)[digest_id]["slack"]
    assert entry["next_attempt_at"] == (later + timedelta(seconds=7)).isoformat()
    assert calls == [(1, 45.0, delivery.MAX_BACKOFF_S), (2, 45.0, delivery.MAX_BACKOFF_S)]


def _due_now(engine: Engine, digest_id: int) -> None:
    """Mark the digest's Slack channel as a retry due at NOW."""
    with Session(engine) as session:
        row = session.get_one(StoredDigest, digest_id)
        row.delivery = {
            "slack": {
                "status": "pending",
                "attempts": 1,
                "error": "HTTP 500",
                "at": None,
                "next_attempt_at": NOW.isoformat(),
            }
        }
        session.add(row)
        session.commit()


def test_a_digest_that_cannot_be_rendered_fails_alone(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    warnings_log: Warnings,
) -> None:
    settings = make_settings(digest_slack_webhook_url=slack.url)
    broken = store(engine, make_digest(week="2026-W46"))
    good = store(engine, make_digest())
    with Session(engine) as session:
        row = session.get_one(StoredDigest, broken)
        row.payload = {"week": "2026-W46", "headline": "not a headline"}  # kept by an old bug
        session.add(row)
        session.commit()
    for digest_id in (broken, good):
        _due_now(engine, digest_id)

    result = delivery.retry_due(engine, settings, NOW)
    # The good one went out in the same round; the broken one failed at once, with the reason.
    assert result[good]["slack"]["status"] == "delivered"
    assert len(slack.payloads) == 1 and "2026-W47" in json.dumps(slack.payloads[0])
    entry = result[broken]["slack"]
    assert entry["status"] == "failed" and entry["attempts"] == 1
    assert entry["error"].startswith("message could not be built: ValidationError")
    assert [r.getMessage() for r in warnings_log.records] == [
        "digest message could not be built",
        f"digest delivery to slack failed for good: {entry['error']}",
    ]
    assert warnings_log.records[0].exc_info is not None
    # Failed for good: no later round sends or logs it again.
    assert delivery.retry_due(engine, settings, NOW + timedelta(days=1)) == {}
    assert len(slack.payloads) == 1 and len(warnings_log.records) == 2


def test_one_channel_that_raises_does_not_stop_the_retries_of_others(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sqlalchemy.exc import OperationalError

    settings = make_settings(digest_slack_webhook_url=slack.url)
    first, second = store(engine, make_digest(week="2026-W46")), store(engine, make_digest())
    for digest_id in (first, second):
        _due_now(engine, digest_id)
    real = delivery._deliver_channel

    def deliver_channel(engine: Engine, digest_id: int, *args: Any, **kwargs: Any) -> None:
        if digest_id == first:
            raise OperationalError("UPDATE digest", {}, Exception("database is locked"))
        real(engine, digest_id, *args, **kwargs)

    monkeypatch.setattr(delivery, "_deliver_channel", deliver_channel)
    with caplog.at_level(logging.ERROR, logger="app.digests"):
        result = delivery.retry_due(engine, settings, NOW)
    assert result[second]["slack"]["status"] == "delivered"
    assert result[first]["slack"]["status"] == "pending"  # left for the next round
    assert len(slack.payloads) == 1
    assert [(r.getMessage(), r.__dict__["digest"]) for r in caplog.records] == [
        ("digest retry error", first)
    ]


def test_a_slack_answer_that_is_not_http_is_a_delivery_error(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    import socketserver

    class NotHttp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), NotHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        settings = make_settings(digest_slack_webhook_url=url, digest_max_attempts=2)
        digest_id = store(engine, make_digest())
        entry = delivery.deliver(engine, digest_id, settings, now=NOW)["slack"]
    finally:
        server.shutdown()
        server.server_close()
    assert entry["status"] == "pending" and entry["attempts"] == 1
    assert entry["error"].startswith("BadStatusLine")


# ---- schedule -------------------------------------------------------------------------------


def _schedule_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("weekday", "hour", "now", "expected"),
    [
        # Monday 08:00: the year boundary (2026 has 53 ISO weeks).
        ("mon", 8, datetime(2027, 1, 4, 7, 59, 59, tzinfo=UTC), None),
        ("mon", 8, datetime(2027, 1, 4, 8, 0, tzinfo=UTC), "2026-W53"),
        ("mon", 8, datetime(2027, 1, 5, 3, 0, tzinfo=UTC), "2026-W53"),
        ("mon", 8, datetime(2027, 1, 10, 23, 59, tzinfo=UTC), "2026-W53"),
        ("mon", 8, datetime(2027, 1, 11, 8, 30, tzinfo=UTC), "2027-W01"),
        ("MON", 0, datetime(2026, 11, 23, 0, 0, tzinfo=UTC), "2026-W47"),
        # Friday 17:00 UTC: earlier days and hours of the week are not due.
        ("fri", 17, datetime(2026, 11, 26, 18, 0, tzinfo=UTC), None),
        ("fri", 17, datetime(2026, 11, 27, 16, 59, tzinfo=UTC), None),
        ("fri", 17, datetime(2026, 11, 27, 17, 0, tzinfo=UTC), "2026-W47"),
        ("fri", 17, datetime(2026, 11, 29, 23, 0, tzinfo=UTC), "2026-W47"),
        ("fri", 17, datetime(2026, 11, 30, 9, 0, tzinfo=UTC), None),
        # Another zone, or none (taken as UTC): 18:30 in Paris is 17:30 UTC.
        (
            "fri",
            17,
            datetime(2026, 11, 27, 18, 30, tzinfo=timezone(timedelta(hours=1))),
            "2026-W47",
        ),
        ("fri", 18, datetime(2026, 11, 27, 18, 30, tzinfo=timezone(timedelta(hours=1))), None),
        ("fri", 17, datetime(2026, 11, 27, 17, 30), "2026-W47"),
        # Sunday 23:00, the last hour of the week.
        ("sun", 23, datetime(2027, 1, 3, 23, 0, tzinfo=UTC), "2026-W52"),
        # Off.
        ("", 8, datetime(2027, 1, 4, 9, 0, tzinfo=UTC), None),
    ],
)
def test_due_week(weekday: str, hour: int, now: datetime, expected: str | None) -> None:
    settings = _schedule_settings(digest_schedule_weekday=weekday, digest_schedule_hour=hour)
    week = schedule.due_week(now, settings)
    assert (str(week) if week else None) == expected


def test_schedule_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="digest_schedule_weekday"):
        _schedule_settings(digest_schedule_weekday="monday")
    with pytest.raises(ValueError, match="digest_schedule_hour"):
        _schedule_settings(digest_schedule_hour=24)


def test_run_schedule_stores_and_delivers_one_digest_per_week(
    engine: Engine, make_settings: Callable[..., Settings], slack: SlackReceiver
) -> None:
    settings = make_settings(
        digest_schedule_weekday="mon",
        digest_schedule_hour=8,
        digest_slack_webhook_url=slack.url,
        digest_link_base=LINK,
    )
    routing = RoutingTable.load(settings.routing_table)
    # A digest someone asked for through the API does not stand in for the scheduled one.
    store(engine, make_digest(week="2026-W53"), trigger="api")

    assert schedule.run_schedule(engine, settings, routing, datetime(2027, 1, 4, 7, 0)) == []
    monday = datetime(2027, 1, 4, 8, 5, tzinfo=UTC)
    (first,) = schedule.run_schedule(engine, settings, routing, monday)
    for later in (monday, monday + timedelta(hours=1), monday + timedelta(days=6)):
        assert schedule.run_schedule(engine, settings, routing, later) == []

    rows = [r for r in stored(engine) if r.trigger == "schedule"]
    assert [(r.id, r.week, r.team) for r in rows] == [(first, "2026-W53", None)]
    row = rows[0]
    assert row.payload["week"] == "2026-W53" and row.payload["headline"]["messages"] == 0
    assert datetime.fromisoformat(row.payload["generated_at"]) == monday
    assert row.markdown.startswith("# Weekly issues digest: 2026-W53")
    assert "<h1>Weekly issues digest: 2026-W53</h1>" in row.html
    assert row.delivery["slack"]["status"] == "delivered"
    assert row.delivery["slack"]["at"] == monday.isoformat()
    (payload,) = slack.payloads
    assert payload["blocks"][0]["text"]["text"] == "Weekly issues digest 2026-W53"
    assert payload["blocks"][-1]["elements"][0]["url"] == f"{LINK}/digests/{first}"

    (second,) = schedule.run_schedule(engine, settings, routing, datetime(2027, 1, 11, 9, 0))
    assert second > first and stored(engine)[-1].week == "2027-W01"
    assert len(slack.payloads) == 2


def test_run_schedule_per_team_and_retries_due_deliveries(
    engine: Engine, make_settings: Callable[..., Settings], slack: SlackReceiver
) -> None:
    settings = make_settings(
        digest_schedule_weekday="fri",
        digest_schedule_hour=17,
        digest_schedule_teams="billing, product-engineering,billing",
        digest_slack_webhook_url=slack.url,
        digest_retry_backoff_s=60,
    )
    routing = RoutingTable.load(settings.routing_table)
    slack.status = 503
    friday = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    ids = schedule.run_schedule(engine, settings, routing, friday)
    rows = stored(engine)
    assert [r.id for r in rows] == ids and len(ids) == 2
    assert [(r.week, r.team, r.trigger) for r in rows] == [
        ("2026-W47", "billing", "schedule"),
        ("2026-W47", "product-engineering", "schedule"),
    ]
    assert all(r.delivery["slack"]["status"] == "pending" for r in rows)
    assert all(r.delivery["slack"]["attempts"] == 1 for r in rows)
    assert {p["blocks"][0]["text"]["text"] for p in slack.payloads} == {
        "Weekly issues digest 2026-W47 · team billing",
        "Weekly issues digest 2026-W47 · team product-engineering",
    }

    slack.status = 200
    # Not yet due: nothing new is built and nothing is sent.
    assert schedule.run_schedule(engine, settings, routing, friday + timedelta(seconds=30)) == []
    assert len(slack.payloads) == 2
    # Due: the same call sends the retries.
    assert schedule.run_schedule(engine, settings, routing, friday + timedelta(minutes=2)) == []
    rows = stored(engine)
    assert len(rows) == 2 and len(slack.payloads) == 4
    assert all(r.delivery["slack"]["status"] == "delivered" for r in rows)
    assert all(r.delivery["slack"]["attempts"] == 2 for r in rows)


def test_run_schedule_one_team_that_raises_does_not_stop_the_others(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        digest_schedule_weekday="mon",
        digest_schedule_hour=8,
        digest_schedule_teams="billing,product-engineering",
        digest_slack_webhook_url=slack.url,
    )
    routing = RoutingTable.load(settings.routing_table)
    monday = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
    real = schedule.build_digest

    def build(session: Session, *, team: str | None, **kwargs: Any) -> Digest:
        if team == "billing":
            raise RecursionError("maximum recursion depth exceeded")
        return real(session, team=team, **kwargs)

    monkeypatch.setattr(schedule, "build_digest", build)
    with caplog.at_level(logging.ERROR, logger="app.digests"):
        (made,) = schedule.run_schedule(engine, settings, routing, monday)
    assert [(r.team, r.delivery["slack"]["status"]) for r in stored(engine)] == [
        ("product-engineering", "delivered")
    ]
    assert [(r.getMessage(), r.__dict__["team"]) for r in caplog.records] == [
        ("scheduled digest not built", "billing")
    ]
    # Fixed: the next check makes the missing one, and only that one.
    monkeypatch.undo()
    (late,) = schedule.run_schedule(engine, settings, routing, monday + timedelta(minutes=1))
    assert late > made
    assert [r.team for r in stored(engine)] == ["product-engineering", "billing"]
    assert len(slack.payloads) == 2


def test_run_schedule_without_channels_still_keeps_the_digest(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(digest_schedule_weekday="mon", digest_schedule_hour=8)
    routing = RoutingTable.load(settings.routing_table)
    (digest_id,) = schedule.run_schedule(engine, settings, routing, datetime(2027, 1, 4, 8, 0))
    (row,) = stored(engine)
    assert row.id == digest_id and row.delivery == {} and row.week == "2026-W53"


def test_a_digest_stored_but_never_sent_is_picked_up_by_the_retries(
    engine: Engine,
    make_settings: Callable[..., Settings],
    slack: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(
        digest_schedule_weekday="mon", digest_schedule_hour=8, digest_slack_webhook_url=slack.url
    )
    routing = RoutingTable.load(settings.routing_table)
    monday = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("process killed")

    monkeypatch.setattr(delivery, "deliver", crash)
    (digest_id,) = schedule.run_schedule(engine, settings, routing, monday)
    (row,) = stored(engine)
    assert row.id == digest_id
    assert row.delivery["slack"]["status"] == "pending" and row.delivery["slack"]["attempts"] == 0
    monkeypatch.undo()

    # Left alone while the crashed worker might still be sending, then sent by the retries.
    assert schedule.run_schedule(engine, settings, routing, monday + timedelta(minutes=1)) == []
    assert slack.payloads == []
    assert schedule.run_schedule(engine, settings, routing, monday + timedelta(minutes=6)) == []
    (row,) = stored(engine)
    assert row.delivery["slack"]["status"] == "delivered" and len(slack.payloads) == 1


def test_concurrent_workers_store_and_send_once(
    engine: Engine, make_settings: Callable[..., Settings], slack: SlackReceiver
) -> None:
    settings = make_settings(
        digest_schedule_weekday="mon", digest_schedule_hour=8, digest_slack_webhook_url=slack.url
    )
    routing = RoutingTable.load(settings.routing_table)
    monday = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def one(when: datetime) -> None:
        try:
            barrier.wait()
            results.append(schedule.run_schedule(engine, settings, routing, when))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def race(when: datetime) -> None:
        threads = [threading.Thread(target=one, args=(when,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    race(monday)
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert len(stored(engine)) == 1 and len(slack.payloads) == 1

    # A due retry is sent by one worker only.
    digest_id = store(engine, make_digest())
    slack.status = 500
    delivery.deliver(engine, digest_id, settings, now=monday)
    slack.status = 200
    results.clear()
    race(monday + timedelta(hours=1))
    assert len(slack.payloads) == 3
    entry = stored(engine)[-1].delivery["slack"]
    assert entry["status"] == "delivered" and entry["attempts"] == 2


def test_worker_runs_the_schedule_at_most_once_a_minute(
    engine: Engine,
    make_settings: Callable[..., Settings],
    analyzer: Analyzer,
    slack: SlackReceiver,
) -> None:
    now = utcnow()
    settings = make_settings(
        digest_schedule_weekday=schedule.WEEKDAYS[now.weekday()],
        digest_schedule_hour=0,
        digest_slack_webhook_url=slack.url,
    )
    routing = RoutingTable.load(settings.routing_table)
    idle = Worker(engine=engine, analyzer=analyzer, routing=routing)
    assert idle.run_digest_schedule() == [] and stored(engine) == []

    worker = Worker(engine=engine, analyzer=analyzer, routing=routing, digest_settings=settings)
    (digest_id,) = worker.run_digest_schedule()
    assert worker.run_digest_schedule() == []  # checked less than a minute ago
    worker._digest_checked_at = None  # a minute later
    assert worker.run_digest_schedule() == []  # this week's is made already
    (row,) = stored(engine)
    assert row.id == digest_id and row.week == str(IsoWeek.last_complete(now))
    assert row.delivery["slack"]["status"] == "delivered" and len(slack.payloads) == 1
