"""A clustering run reads every analysed ticket of its window: one that cannot be read is left
out (and named in a warning) instead of failing every run."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from app.clusters.run import load_window
from app.core.db import utcnow
from app.tickets.models import Ticket, TicketAnalysis


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def _store(
    engine: Engine, i: int, *, embedding: bytes, evidence: Any = None, meta: Any = None
) -> int:
    with Session(engine, expire_on_commit=False) as session:
        ticket = Ticket(
            source="api",
            external_id=f"r{i}",
            channel="ticket",
            body=f"Checkout fails on step {i}.",
            content_hash=f"{i:064x}",
            meta=meta or {},
            created_at=utcnow() - timedelta(hours=1),
            status="done",
        )
        session.add(ticket)
        session.flush()
        session.add(
            TicketAnalysis(
                ticket_id=ticket.id,
                revision=1,
                uxcx_label="UX",
                uxcx_probability=0.8,
                uxcx_evidence=evidence or [{"start": 0, "end": 8, "weight": 1.0}],
                embedding=embedding,
                embedding_dim=len(embedding) // 4,
            )
        )
        session.commit()
        assert ticket.id is not None
        return ticket.id


def test_unreadable_rows_are_left_out_of_the_run(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    vector = np.array([1.0, 0.0, 0.0, 0.0], dtype="<f4").tobytes()
    good = _store(engine, 1, embedding=vector)
    no_end = _store(engine, 2, embedding=vector, evidence=[{"start": 0, "weight": 1.0}])
    torn = _store(engine, 3, embedding=vector[:6])  # not a whole float32
    other_size = _store(engine, 4, embedding=vector[:12])
    # Metadata nested 400 levels (stored before ingest bounded it) is no reason to leave out.
    deep = _store(engine, 5, embedding=vector, meta=_nested(400))
    with Session(engine) as session, caplog.at_level(logging.WARNING, logger="app.clusters"):
        members, x = load_window(
            session, start=utcnow() - timedelta(days=1), end=utcnow() + timedelta(days=1)
        )
    assert [m.ticket_id for m in members] == [good, deep]
    assert x.shape == (2, 4) and x.dtype == np.float32 and float(x[1, 0]) == 1.0
    assert members[0].uxcx is not None and members[0].uxcx.evidence[0].text == "Checkout"
    (record,) = caplog.records
    assert (
        record.getMessage() == "cluster run left out tickets whose stored analysis cannot be read"
    )
    assert record.__dict__["count"] == 3
    assert sorted(record.__dict__["tickets"]) == [no_end, torn, other_size]


def test_a_window_of_unreadable_rows_is_empty(engine: Engine) -> None:
    _store(engine, 1, embedding=b"\0\0\0", evidence=[{"end": 1}])
    with Session(engine) as session:
        members, x = load_window(
            session, start=utcnow() - timedelta(days=1), end=utcnow() + timedelta(days=1)
        )
    assert members == [] and x.shape == (0, 0)
