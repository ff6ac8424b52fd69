"""The worker: claims pending tickets, analyses them in batches, and never loses one.

Each batch is bounded by count and by characters (`queue.claim`) and comes from one of two
lanes, short and long tickets; when both have work the worker serves them in turn, so neither
waits behind a flood of the other. When the queue runs dry the memory the batches used is
handed back to the system (`runtime.release_memory`); not between batches, where reusing it is
what keeps a flood fast. A ticket whose analysis or write raises
is recorded as a failed attempt on its own (`enrich_service.analyse`, `enrich_service.store`);
an error outside any ticket (the database gone) waits `core.retry.backoff` before the next try.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session

from app.core.db import begin_write, utcnow
from app.core.retry import backoff
from app.enrich import queue
from app.enrich import service as enrich_service
from app.enrich.queue import Lane, WorkSignal
from app.nlp.analyzer import Analyzer
from app.nlp.runtime import release_memory
from app.routing.table import RoutingTable

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger("app.worker")

# The longest wait between tries while batches keep failing for a reason outside any ticket.
ERROR_BACKOFF_CAP_S = 60.0


class Worker:
    """Runs batches until stopped; all state lives in the database."""

    def __init__(
        self,
        *,
        engine: Engine,
        analyzer: Analyzer,
        routing: RoutingTable,
        batch_size: int = 64,
        batch_chars: int = 64_000,
        poll_interval_s: float = 1.0,
        max_attempts: int = 3,
        signal: WorkSignal | None = None,
        assign_min_cosine: float | None = 0.5,
        cluster_params: Any = None,
        outbound: bool = False,
        digest_settings: Settings | None = None,
    ) -> None:
        self.engine = engine
        self.analyzer = analyzer
        self.routing = routing
        self.batch_size = batch_size
        self.batch_chars = batch_chars
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.signal = signal or WorkSignal()
        self.assign_min_cosine = assign_min_cosine
        self.cluster_params = cluster_params
        self.outbound = outbound
        self.digest_settings = digest_settings
        self._digest_checked_at: float | None = None
        self._nlp: Any = None
        self._lane: Lane | None = None  # the lane of the batch in progress
        self._holding = False  # batches ran since memory was last handed back
        self._stop = threading.Event()
        # The lane tried first by the next claim: the other one after each batch.
        self._lanes: tuple[Lane, Lane] = (Lane.short, Lane.long)
        self.error_streak = 0  # batches failed in a row outside any ticket

    def run_cluster_runs(self) -> int:
        """Carry out every queued clustering run, oldest first; returns how many ran."""
        from app.clusters import run as cluster_run

        done = 0
        while not self._stop.is_set():
            run_id = cluster_run.claim_run(self.engine)
            if run_id is None:
                return done
            if self._nlp is None:
                from app.nlp.evidence import load_spacy

                self._nlp = load_spacy()
            cluster_run.execute_run(self.engine, run_id, nlp=self._nlp, params=self.cluster_params)
            done += 1
        return done

    def run_digest_schedule(self) -> list[int]:
        """Build and send the scheduled weekly digest when due (looked at once a minute)."""
        if self.digest_settings is None:
            return []
        now = time.monotonic()
        if self._digest_checked_at is not None and now - self._digest_checked_at < 60:
            return []
        self._digest_checked_at = now
        from app.digests import schedule

        try:
            return schedule.run_schedule(self.engine, self.digest_settings, self.routing, utcnow())
        except Exception:  # noqa: BLE001 - retried next minute; keep the worker alive
            log.exception("digest schedule error", extra={"stage": "digest"})
            return []

    def run_once(self) -> enrich_service.BatchOutcome:
        """Claim, analyse and store one batch; returns its counts (claimed 0 when idle)."""
        if queue.supports_skip_locked(self.engine):
            return self._run_locked()
        return self._run_optimistic()

    def _claim(self, session: Session, *, lock: bool) -> list[enrich_service.Claimed]:
        lane, tickets = queue.claim(
            session,
            lanes=self._lanes,
            max_tickets=self.batch_size,
            max_chars=self.batch_chars,
            lock=lock,
        )
        if lane is not None:
            other = Lane.long if lane is Lane.short else Lane.short
            self._lanes = (other, lane)
        self._lane = lane
        return enrich_service.snapshot(tickets)

    def _run_locked(self) -> enrich_service.BatchOutcome:
        # One transaction from claim to write: a crash rolls everything back and the row
        # locks vanish with the connection, so the tickets are simply still pending.
        with Session(self.engine, expire_on_commit=False) as session:
            claimed = self._claim(session, lock=True)
            if not claimed:
                session.rollback()
                return enrich_service.BatchOutcome()
            outcome = self._analyse_and_write(session, claimed)
            session.commit()
        return outcome

    def _run_optimistic(self) -> enrich_service.BatchOutcome:
        with Session(self.engine, expire_on_commit=False) as session:
            claimed = self._claim(session, lock=False)
            session.rollback()  # release the read snapshot before the slow part
        if not claimed:
            return enrich_service.BatchOutcome()
        with Session(self.engine, expire_on_commit=False) as session:
            outcome = self._analyse_and_write(session, claimed, before_write=begin_write)
            session.commit()
        return outcome

    def _analyse_and_write(
        self,
        session: Session,
        claimed: list[enrich_service.Claimed],
        before_write: Callable[[Session], None] | None = None,
    ) -> enrich_service.BatchOutcome:
        start = time.perf_counter()
        chars = sum(len(c.text) for c in claimed)
        log.info(
            "batch claimed",
            extra={
                "stage": "enrich",
                "size": len(claimed),
                "first_id": claimed[0].id,
                "lane": str(self._lane),
                "chars": chars,
            },
        )
        results = enrich_service.analyse(self.analyzer, claimed)
        analysed = time.perf_counter()
        if before_write is not None:
            before_write(session)
        outcome = enrich_service.store(
            session,
            claimed=claimed,
            results=results,
            routing=self.routing,
            versions=self.analyzer.versions,
            max_attempts=self.max_attempts,
            assign_min_cosine=self.assign_min_cosine,
            outbound=self.outbound,
        )
        self._holding = True
        took = time.perf_counter() - start
        log.info(
            "batch done",
            extra={
                "stage": "enrich",
                "lane": str(self._lane),
                "size": len(claimed),
                "done": outcome.done,
                "failed": outcome.failed,
                "skipped": outcome.skipped,
                "analyse_ms": round((analysed - start) * 1000, 1),
                "total_ms": round(took * 1000, 1),
            },
        )
        return outcome

    def release_memory(self) -> None:
        """Hand back what the batches since the last call kept (ONNX arenas, glibc's free
        lists); the worker does it whenever the queue runs dry."""
        if not self._holding:
            return
        self._holding = False
        start = time.perf_counter()
        release_memory()
        log.info(
            "memory released",
            extra={"stage": "enrich", "ms": round((time.perf_counter() - start) * 1000, 1)},
        )

    def drain(self) -> int:
        """Process batches until nothing is pending; returns how many tickets were finished."""
        total = 0
        while not self._stop.is_set():
            outcome = self.run_once()
            if outcome.claimed == 0:
                break
            total += outcome.done + outcome.failed
            if outcome.done + outcome.failed == 0:
                # Everything claimed was changed underneath us; don't spin on it.
                time.sleep(0.05)
        self.release_memory()
        return total

    def run(self) -> None:
        """Loop until `stop()`: work while there is work, otherwise wait for a signal or poll."""
        log.info(
            "worker started",
            extra={
                "stage": "enrich",
                "batch_size": self.batch_size,
                "batch_chars": self.batch_chars,
            },
        )
        while not self._stop.is_set():
            try:
                outcome = self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                self.error_streak += 1
                delay = backoff(self.error_streak, self.poll_interval_s, ERROR_BACKOFF_CAP_S)
                log.exception(
                    "worker batch error; retrying after a backoff",
                    extra={
                        "stage": "enrich",
                        "failures": self.error_streak,
                        "wait_s": round(delay, 2),
                    },
                )
                self._stop.wait(delay)
                continue
            self.error_streak = 0
            if outcome.claimed == 0:
                self.release_memory()
                try:
                    if self.run_cluster_runs():
                        continue
                except Exception:  # noqa: BLE001 - recorded on the run; keep the worker alive
                    log.exception("cluster run error", extra={"stage": "cluster"})
                self.run_digest_schedule()
                self.signal.wait(self.poll_interval_s)
        log.info("worker stopped", extra={"stage": "enrich"})

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stop.set()
        self.signal.notify()


def start_in_thread(worker: Worker) -> threading.Thread:
    """Run the worker in a daemon thread of this process (the embedded setup)."""
    thread = threading.Thread(target=worker.run, name="enrich-worker", daemon=True)
    thread.start()
    return thread
