"""The worker through the real analysers and database: batches, failures, crashes, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from app.core.config import Settings
from app.enrich import queue
from app.enrich import service as enrich_service
from app.enrich.worker import Worker
from app.main import create_app
from app.nlp.analyzer import Analyzer, compose_text
from app.routing.table import RoutingTable
from app.tickets.models import Ticket, TicketAnalysis
from tests.helpers import AUTH, count_rows, tickets_by_status, wait_for

ROOT = Path(__file__).resolve().parents[2]


def ingest(client: TestClient, items: list[dict]) -> list[int]:
    r = client.post("/v1/tickets", json=items)
    assert r.status_code == 202, r.text
    return [d["id"] for d in r.json()["data"]]


def test_worker_finishes_a_batch_with_real_analysis(
    client: TestClient, engine: Engine, worker: Worker, analyzer: Analyzer, sample_items: list[dict]
) -> None:
    ids = ingest(client, sample_items)
    done = worker.drain()
    assert done == len(sample_items)
    assert tickets_by_status(engine) == {"done": len(sample_items)}
    assert count_rows(engine, "ticket_analysis") == len(sample_items)

    routing = RoutingTable.load(Settings(_env_file=None).routing_table)  # type: ignore[call-arg]
    with Session(engine) as s:
        rows = {a.ticket_id: a for a in s.exec(select(TicketAnalysis)).all()}
        tickets = {t.id: t for t in s.exec(select(Ticket)).all()}
    texts = [compose_text(tickets[i].subject, tickets[i].body) for i in ids]
    expected = analyzer.embedder.embed(texts)
    for i, tid in enumerate(ids):
        a, t = rows[tid], tickets[tid]
        assert a.revision == t.revision == 1 and t.attempts == 1
        vec = np.frombuffer(a.embedding, dtype="<f4")
        assert vec.shape == (a.embedding_dim,) == (384,)
        # The stored vector is the encoder's embedding of the ticket's text (one pass, stored).
        assert float(vec @ expected[i]) > 0.999
        if t.language_supported:
            assert a.uxcx_label in ("UX", "CX", "none")
            assert abs(sum(a.uxcx_probabilities.values()) - 1) < 1e-3  # type: ignore[union-attr]
            assert a.uxcx_probability == max(a.uxcx_probabilities.values())  # type: ignore[union-attr]
            assert -1.0 <= a.sentiment_score <= 1.0  # type: ignore[operator]
            assert a.team == routing.team_for(a.uxcx_label, a.uxcx_subcategory)
        assert a.analysers["embedder"].startswith("all-MiniLM-L6-v2")

    by_ext = {tickets[i].external_id: rows[i] for i in ids}
    # Clear cases of the simple first labeller and of VADER.
    assert by_ext["ZD-1001"].uxcx_label == "UX"  # app crashes after an update
    assert by_ext["HS-301"].uxcx_label == "CX"  # charged twice
    assert by_ext["HS-301"].team == "billing"
    assert by_ext["mail-20261105-01"].uxcx_label == "CX"  # parcel not delivered
    assert by_ext["1855000000000000003"].sentiment_label == "positive"
    # The Spanish post is stored, embedded and flagged, but not judged by English analysers.
    spanish = by_ext["1855000000000000006"]
    assert tickets[spanish.ticket_id].language == "es"
    assert tickets[spanish.ticket_id].language_supported is False
    assert spanish.sentiment_label is None and spanish.uxcx_label is None
    assert spanish.team == "triage"
    # Its JSON columns are SQL NULL (not JSON null), as for any row written with no value.
    with engine.connect() as conn:
        nulls = conn.execute(
            text(
                "SELECT count(*) FROM ticket_analysis WHERE ticket_id = :t AND "
                "sentiment_probabilities IS NULL AND uxcx_probabilities IS NULL AND "
                "uxcx_evidence IS NULL AND sentiment_most_negative IS NULL"
            ),
            {"t": spanish.ticket_id},
        ).scalar_one()
    assert nulls == 1
    body = client.get(f"/v1/tickets/{spanish.ticket_id}").json()
    assert "not English" in body["analysis"]["note"]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing inside catches it."""


class CrashingAnalyzer:
    """Delegates to the real analyzer, then dies before the batch is written."""

    def __init__(self, real: Analyzer) -> None:
        self.real = real
        self.versions = real.versions

    def analyze(self, texts: list[str]) -> list:
        self.real.analyze(texts)
        raise Crash()


def test_crash_mid_batch_leaves_tickets_pending(
    client: TestClient, engine: Engine, worker: Worker, analyzer: Analyzer, sample_items: list[dict]
) -> None:
    ingest(client, sample_items[:10])
    crashing = Worker(
        engine=engine, analyzer=CrashingAnalyzer(analyzer), routing=worker.routing, batch_size=10
    )  # type: ignore[arg-type]
    with pytest.raises(Crash):
        crashing.run_once()
    assert tickets_by_status(engine) == {"pending": 10}
    assert count_rows(engine, "ticket_analysis") == 0
    # Nothing was lost: a healthy worker finishes them all.
    assert worker.drain() == 10
    assert tickets_by_status(engine) == {"done": 10}


class PickyAnalyzer:
    """Fails on texts containing a marker, like an analyser meeting an input it cannot handle."""

    def __init__(self, real: Analyzer) -> None:
        self.real = real
        self.versions = real.versions

    def analyze(self, texts: list[str]) -> list:
        if any("POISON" in t for t in texts):
            raise ValueError("cannot analyse this text")
        return self.real.analyze(texts)


def test_one_failing_ticket_fails_alone_and_is_retried_then_failed(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    items = [
        {"source": "api", "external_id": str(i), "body": f"App crashes on screen {i}"}
        for i in range(5)
    ]
    items[2]["body"] = "POISON text"
    ids = ingest(client, items)
    picky = Worker(
        engine=engine,
        analyzer=PickyAnalyzer(analyzer),
        routing=worker.routing,
        batch_size=10,
        max_attempts=3,
    )  # type: ignore[arg-type]
    first = picky.run_once()
    assert (first.claimed, first.done, first.failed) == (5, 4, 1)
    with Session(engine) as s:
        bad = s.get(Ticket, ids[2])
        assert bad is not None
        assert bad.status == "pending" and bad.attempts == 1
        assert bad.last_error == "ValueError: cannot analyse this text"
    picky.drain()
    with Session(engine) as s:
        bad = s.get(Ticket, ids[2])
        assert bad is not None and bad.status == "failed" and bad.attempts == 3
    assert tickets_by_status(engine) == {"done": 4, "failed": 1}
    r = client.get("/v1/tickets", params={"status": "failed"}).json()
    assert r["count"] == 1 and r["data"][0]["last_error"].startswith("ValueError")


def test_analysis_of_an_old_text_is_not_stored_over_a_new_one(
    client: TestClient, engine: Engine, analyzer: Analyzer, worker: Worker
) -> None:
    item = {"source": "api", "external_id": "race", "body": "The app crashes on start"}
    ingest(client, [item])
    with Session(engine) as s:
        claimed = enrich_service.snapshot(queue.peek_pending(s, limit=10))
    results = enrich_service.analyse(analyzer, claimed)
    # The customer edits the ticket while the worker is analysing the first text.
    item["body"] = "Never mind the crash, I was charged twice"
    ingest(client, [item])
    with Session(engine) as s:
        outcome = enrich_service.write_results(
            s,
            claimed=claimed,
            results=results,
            routing=worker.routing,
            versions=analyzer.versions,
            max_attempts=3,
        )
        s.commit()
    assert (outcome.done, outcome.skipped) == (0, 1)
    assert tickets_by_status(engine) == {"pending": 1}
    assert count_rows(engine, "ticket_analysis") == 0
    worker.drain()
    with Session(engine) as s:
        a = s.exec(select(TicketAnalysis)).one()
        assert a.revision == 2 and a.uxcx_label == "CX"


def test_in_process_worker_analyses_new_tickets(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    settings = make_settings(worker_in_process=True, worker_poll_interval_s=5.0)
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        assert c.get("/readyz").json()["checks"]["worker"] == "ok"
        tid = ingest(c, [{"source": "email", "external_id": "w1", "body": "Where is my refund?"}])[
            0
        ]
        # Woken by the ingest signal, not by the 5 s poll.
        assert wait_for(lambda: c.get(f"/v1/tickets/{tid}").json()["status"] == "done", 4.0)
        assert c.get(f"/v1/tickets/{tid}").json()["analysis"]["uxcx"]["label"] == "CX"


def _worker_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DATA_DIR": str(tmp_path / "var"),
        "AUTHOR_HASH_SALT": "test-salt",
        "LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TEST_DATABASE_URL", None)
    return env


def test_killed_worker_leaves_batch_pending_and_a_second_worker_finishes(
    client: TestClient, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    # Long texts in one big batch, so the kill lands while the batch is being analysed.
    words = "the app crashes when I upload a photo and support has not answered my emails " * 10
    n = 200
    ingest(
        client,
        [{"source": "api", "external_id": f"k{i}", "body": f"{i} {words}"} for i in range(n)],
    )
    env = _worker_env(db_url, tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-m", "app.worker", "--batch-size", str(n)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert first.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = first.stdout.readline()
        lines.append(line)
        if "batch claimed" in line or not line:
            break
    assert any("batch claimed" in line for line in lines), "".join(lines)
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    rest = first.stdout.read()
    assert "batch done" not in rest, "the batch finished before the kill; the test proves nothing"
    assert tickets_by_status(engine) == {"pending": n}
    assert count_rows(engine, "ticket_analysis") == 0

    second = subprocess.run(
        [sys.executable, "-m", "app.worker", "--once", "--batch-size", "128"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert tickets_by_status(engine) == {"done": n}
    assert count_rows(engine, "ticket_analysis") == n


def test_standalone_worker_runs_below_the_api() -> None:
    """WORKER_PRIORITY=idle: SCHED_IDLE, and a worker leading its own session lowers its
    autogroup too (Linux shares the CPU between sessions before priorities count)."""
    import os
    import subprocess
    import sys

    code = (
        "import os; from pathlib import Path; from app.worker import lower_priority; "
        "lower_priority('idle'); print(os.sched_getscheduler(0)); "
        "print(Path('/proc/self/autogroup').read_text().strip())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        start_new_session=True, check=True,
    )  # fmt: skip
    policy, autogroup = out.stdout.splitlines()
    assert int(policy) == os.SCHED_IDLE
    assert autogroup.endswith("nice 19")
