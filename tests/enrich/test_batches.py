"""Batches bounded by text, lanes for short and long tickets, failures isolated per ticket, and
the worker's error loop backing off. Through the real analysers and both databases."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.core.db import make_engine
from app.enrich import queue
from app.enrich import service as enrich_service
from app.enrich.queue import SHORT_BODY_CHARS, Lane
from app.enrich.worker import ERROR_BACKOFF_CAP_S, Worker
from app.nlp.analyzer import Analysis, Analyzer
from app.nlp.base import Language
from app.tickets.models import Ticket, TicketAnalysis
from tests.helpers import count_rows, tickets_by_status

ROOT = Path(__file__).resolve().parents[2]


def long_text(chars: int, seed: int) -> str:
    """A long customer message made of the project's written tickets (varied, real words)."""
    texts = [
        json.loads(line)["text"]
        for path in sorted((ROOT / "fixtures" / "uxcx").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line
    ]
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(len(p) + 2 for p in parts) < chars:
        parts.append(rng.choice(texts))
    return "\n\n".join(parts)[:chars].strip()


def ingest(client: TestClient, items: list[dict[str, Any]]) -> list[int]:
    r = client.post("/v1/tickets", json=items)
    assert r.status_code == 202, r.text
    return [d["id"] for d in r.json()["data"]]


def stored_chars(engine: Engine, ids: list[int]) -> dict[int, int]:
    with Session(engine) as s:
        rows = s.exec(select(Ticket).where(col(Ticket.id).in_(ids))).all()
        return {t.id: len(t.body) + len(t.subject or "") for t in rows if t.id is not None}


class Recording:
    """The real analyser, remembering the texts of every call (and failing on a marker)."""

    def __init__(self, real: Analyzer, *, poison: str | None = None) -> None:
        self.real = real
        self.versions = real.versions
        self.poison = poison
        self.calls: list[list[str]] = []

    def analyze(self, texts: list[str]) -> list[Analysis]:
        self.calls.append(list(texts))
        if self.poison and any(self.poison in t for t in texts):
            raise ValueError("cannot analyse this text")
        return self.real.analyze(texts)


def test_a_batch_is_cut_by_the_text_budget(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    longs = ingest(
        client,
        [
            {"source": "email", "external_id": f"long-{i}", "body": long_text(5_000, i)}
            for i in range(5)
        ],
    )
    ingest(
        client,
        [
            {"source": "twitter", "external_id": f"s{i}", "body": f"app crashes on login #{i}"}
            for i in range(40)
        ],
    )
    chars_of_longs = stored_chars(engine, longs)
    assert all(SHORT_BODY_CHARS < n <= 5_000 for n in chars_of_longs.values())
    recording = Recording(analyzer)
    budgeted = Worker(
        engine=engine,
        analyzer=recording,  # type: ignore[arg-type]
        routing=worker.routing,
        batch_size=512,
        batch_chars=12_000,
    )
    batches: list[tuple[str, int, int]] = []  # lane, tickets, characters analysed
    while (outcome := budgeted.run_once()).claimed:
        assert outcome.done == outcome.claimed
        analysed = sum(len(t) for call in recording.calls for t in call)
        batches.append((str(budgeted._lane), outcome.claimed, analysed))
        recording.calls.clear()
    # Lanes in turn: all 40 short tickets in one batch, the 5 long ones two at a time
    # (2 x ~5,000 characters fit 12,000, a third would not).
    assert [(lane, n) for lane, n, _ in batches] == [
        ("short", 40),
        ("long", 2),
        ("long", 2),
        ("long", 1),
    ]
    assert all(chars <= 12_000 for _, _, chars in batches)
    assert sum(chars for _, _, chars in batches[1:]) == sum(chars_of_longs.values())
    assert tickets_by_status(engine) == {"done": 45}
    assert count_rows(engine, "ticket_analysis") == 45


def test_claim_takes_at_least_one_ticket_longer_than_the_budget(
    client: TestClient, engine: Engine
) -> None:
    [big] = ingest(client, [{"source": "api", "external_id": "big", "body": long_text(9_000, 7)}])
    with Session(engine) as s:
        lane, tickets = queue.claim(
            s, lanes=(Lane.short, Lane.long), max_tickets=10, max_chars=1_000, lock=False
        )
        claimed = [t.id for t in tickets]
        s.rollback()
    assert lane is Lane.long and claimed == [big]
    with Session(engine) as s:
        # Nothing pending in either lane once it is done.
        s.exec(select(Ticket)).one().status = "done"
        s.commit()
        assert queue.claim(
            s, lanes=(Lane.long, Lane.short), max_tickets=10, max_chars=1_000, lock=False
        ) == (None, [])


def test_a_short_ticket_is_not_kept_behind_a_flood_of_long_ones(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    ingest(
        client,
        [
            {"source": "zendesk", "external_id": f"flood-{i}", "body": long_text(4_000, i)}
            for i in range(30)
        ],
    )
    fast = Worker(engine=engine, analyzer=analyzer, routing=worker.routing, batch_chars=8_000)
    first = fast.run_once()  # the flood is all there is: a long batch (2 tickets)
    assert (str(fast._lane), first.done) == ("long", 2)
    [short] = ingest(
        client, [{"source": "twitter", "external_id": "other", "body": "I was charged twice"}]
    )
    second = fast.run_once()
    assert (str(fast._lane), second.done) == ("short", 1)
    with Session(engine) as s:
        ticket = s.get(Ticket, short)
        assert ticket is not None and ticket.status == "done"
        assert s.get(TicketAnalysis, short) is not None
    assert tickets_by_status(engine) == {"done": 3, "pending": 28}


def test_a_long_ticket_is_not_kept_behind_a_flood_of_short_ones(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    ingest(
        client,
        [
            {"source": "twitter", "external_id": f"t{i}", "body": f"refund {i} late"}
            for i in range(60)
        ],
    )
    [long_id] = ingest(
        client, [{"source": "email", "external_id": "long", "body": long_text(3_000, 1)}]
    )
    small = Worker(engine=engine, analyzer=analyzer, routing=worker.routing, batch_size=10)
    lanes = []
    for _ in range(2):
        small.run_once()
        lanes.append(str(small._lane))
    assert lanes == ["short", "long"]
    with Session(engine) as s:
        ticket = s.get(Ticket, long_id)
        assert ticket is not None and ticket.status == "done"
    assert tickets_by_status(engine) == {"done": 11, "pending": 50}


def test_a_ticket_whose_analysis_raises_fails_alone_and_the_rest_is_stored(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    items = [
        {"source": "api", "external_id": str(i), "body": f"The export to CSV hangs at {i}%"}
        for i in range(16)
    ]
    items[11]["body"] = "POISON: the analyser cannot take this one"
    ids = ingest(client, items)
    picky = Recording(analyzer, poison="POISON")
    failing = Worker(
        engine=engine,
        analyzer=picky,  # type: ignore[arg-type]
        routing=worker.routing,
        batch_size=16,
        max_attempts=1,
    )
    outcome = failing.run_once()
    assert (outcome.claimed, outcome.done, outcome.failed) == (16, 15, 1)
    with Session(engine) as s:
        bad = s.get(Ticket, ids[11])
        assert bad is not None and bad.status == "failed" and bad.attempts == 1
        assert bad.last_error == "ValueError: cannot analyse this text"
        stored = s.exec(select(TicketAnalysis)).all()
    assert sorted(a.ticket_id for a in stored) == sorted(i for i in ids if i != ids[11])
    assert tickets_by_status(engine) == {"done": 15, "failed": 1}
    # Halving: 16 -> 8 -> 4 -> 2 -> 1, each half that holds the poison failing; every good text
    # is analysed at most 5 times in all (once per level), never 16 one-by-one calls after.
    assert len(picky.calls) == 9
    per_text = [sum(text in call for call in picky.calls) for text in (i["body"] for i in items)]
    assert max(per_text) <= 5 and per_text[11] == 5


def test_a_ticket_that_failed_before_is_analysed_on_its_own(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    items = [{"source": "api", "external_id": str(i), "body": f"login loop {i}"} for i in range(6)]
    items[0]["body"] = "POISON in the first ticket"
    ingest(client, items)
    picky = Recording(analyzer, poison="POISON")
    retrying = Worker(
        engine=engine,
        analyzer=picky,  # type: ignore[arg-type]
        routing=worker.routing,
        max_attempts=3,
    )
    assert retrying.run_once().failed == 1
    picky.calls.clear()
    # Its second try: a call of its own; no good ticket is held back by it again.
    second = retrying.run_once()
    assert (second.claimed, second.failed) == (1, 1)
    assert picky.calls == [["POISON in the first ticket"]]


def test_a_ticket_whose_write_raises_fails_alone_and_the_rest_is_stored(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    class Unwritable(Recording):
        """Analyses that the database cannot store for one text (a value no driver binds)."""

        def analyze(self, texts: list[str]) -> list[Analysis]:
            out = super().analyze(texts)
            return [
                dataclasses.replace(
                    a,
                    language=Language(code="en", confidence={"x": 1}, supported=True),  # type: ignore[arg-type]
                )
                if "UNWRITABLE" in t
                else a
                for t, a in zip(texts, out, strict=True)
            ]

    items = [
        {"source": "api", "external_id": str(i), "body": f"order {i} arrived damaged"}
        for i in range(8)
    ]
    items[3]["body"] = "UNWRITABLE: the parcel was opened"
    ids = ingest(client, items)
    writer = Worker(
        engine=engine,
        analyzer=Unwritable(analyzer),  # type: ignore[arg-type]
        routing=worker.routing,
        max_attempts=1,
    )
    outcome = writer.run_once()
    assert (outcome.claimed, outcome.done, outcome.failed) == (8, 7, 1)
    with Session(engine) as s:
        bad = s.get(Ticket, ids[3])
        assert bad is not None and bad.status == "failed" and bad.attempts == 1
        assert bad.last_error and "dict" in bad.last_error
        good = s.get(Ticket, ids[0])
        assert good is not None and good.status == "done" and good.language == "en"
    assert count_rows(engine, "ticket_analysis") == 7
    assert tickets_by_status(engine) == {"done": 7, "failed": 1}


def test_analysis_slices_hold_similar_lengths_within_the_budget() -> None:
    claimed = [
        enrich_service.Claimed(id=i, revision=1, text="x" * n, attempts=a)
        for i, (n, a) in enumerate([(900, 0), (50, 0), (500, 0), (60, 2), (3_000, 0), (40, 0)])
    ]
    slices = enrich_service.slices(claimed, max_chars=1_000)
    # The retried ticket alone; the rest shortest first, each slice within 1,000 characters
    # except a longer text on its own.
    assert slices == [[3], [5, 1, 2], [0], [4]]


def test_the_error_loop_backs_off(engine: Engine, analyzer: Analyzer, worker: Worker) -> None:
    """Batches failing outside any ticket (the database unreachable) wait twice as long each
    time, from the poll interval, with +-20% jitter; a batch that works resets the streak."""
    down = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    looping = Worker(engine=down, analyzer=analyzer, routing=worker.routing, poll_interval_s=0.5)
    waits: list[float] = []
    idle = threading.Event()

    class Recorder(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waits.append(timeout)
            if len(waits) == 5:
                looping.engine = engine  # the database is back
            return self.is_set()

    class Idle(queue.WorkSignal):
        def wait(self, timeout: float) -> bool:
            idle.set()
            looping.stop()
            return True

    looping._stop = Recorder()
    looping.signal = Idle()
    looping.run()
    down.dispose()
    assert idle.is_set() and looping.error_streak == 0
    assert len(waits) == 5
    for k, wait in enumerate(waits):
        expected = min(0.5 * 2**k, ERROR_BACKOFF_CAP_S)
        assert expected * 0.8 <= wait <= expected * 1.2, (k, wait)
