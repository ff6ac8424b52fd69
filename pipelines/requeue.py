"""Put analysed or failed tickets back in the queue, e.g. after changing an analyser."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Engine, update
from sqlmodel import Session, col

from app.core.db import begin_write
from app.tickets.models import AnalysisStatus, Ticket


def requeue(
    engine: Engine,
    *,
    statuses: list[str],
    source: str | None = None,
    received_from: datetime | None = None,
) -> int:
    """Mark matching tickets pending with fresh attempts; returns how many were re-queued."""
    conditions: list[ColumnElement[bool]] = [col(Ticket.status).in_(statuses)]
    if source:
        conditions.append(col(Ticket.source) == source)
    if received_from:
        conditions.append(col(Ticket.received_at) >= received_from)
    with Session(engine) as session:
        begin_write(session)
        result = session.execute(
            update(Ticket)
            .where(*conditions)
            .values(status=AnalysisStatus.pending.value, attempts=0, last_error=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
