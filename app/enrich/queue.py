"""The durable work queue: pending tickets in the database, claimed in batches."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.tickets.models import AnalysisStatus, Ticket


class WorkSignal:
    """Wakes an in-process worker as soon as new work is committed (polling is the fallback)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def notify(self) -> None:
        """Tell the worker there is work."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until notified or `timeout` seconds pass; True when notified."""
        notified = self._event.wait(timeout)
        self._event.clear()
        return notified


def supports_skip_locked(engine: Engine) -> bool:
    """PostgreSQL lets workers share the queue with FOR UPDATE SKIP LOCKED; SQLite does not."""
    return engine.dialect.name == "postgresql"


def claim_locked(session: Session, *, limit: int) -> Sequence[Ticket]:
    """Lock up to `limit` pending tickets that no other worker holds (PostgreSQL).

    The locks last until the session's transaction ends: a worker that dies mid-batch releases
    them with its connection and the tickets are still pending for the next worker.
    """
    stmt = (
        select(Ticket)
        .where(col(Ticket.status) == AnalysisStatus.pending.value)
        .order_by(col(Ticket.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.exec(stmt).all()


def peek_pending(session: Session, *, limit: int) -> Sequence[Ticket]:
    """Read up to `limit` pending tickets without locking (SQLite: one writer at a time).

    Results are written back only if the ticket is still pending at the same revision, so a
    second worker or a concurrent update never gets overwritten by a stale analysis.
    """
    stmt = (
        select(Ticket)
        .where(col(Ticket.status) == AnalysisStatus.pending.value)
        .order_by(col(Ticket.id))
        .limit(limit)
    )
    return session.exec(stmt).all()
