"""Analyse stored tickets and write the results back, only onto the text that was analysed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, bindparam, case, delete, insert, select, update
from sqlmodel import Session, col

from app.core.db import utcnow
from app.nlp.analyzer import Analysis, Analyzer, compose_text
from app.routing.table import RoutingTable
from app.tickets.models import AnalysisStatus, Ticket, TicketAnalysis

log = logging.getLogger("app.enrich")


@dataclass(frozen=True, slots=True)
class Claimed:
    """The parts of a claimed ticket the analysis needs (detached from any session)."""

    id: int
    revision: int
    text: str


@dataclass(slots=True)
class BatchOutcome:
    """Counts for one batch."""

    claimed: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0  # changed or finished by someone else while we analysed


def snapshot(tickets: Sequence[Ticket]) -> list[Claimed]:
    """Copy what the analysis needs out of ORM rows."""
    out = []
    for t in tickets:
        assert t.id is not None
        out.append(Claimed(id=t.id, revision=t.revision, text=compose_text(t.subject, t.body)))
    return out


def analyse(analyzer: Analyzer, claimed: Sequence[Claimed]) -> list[Analysis | Exception]:
    """Analyse a batch; if it fails, each text is tried alone so one bad text fails alone."""
    texts = [c.text for c in claimed]
    try:
        return list(analyzer.analyze(texts))
    except Exception as batch_exc:  # noqa: BLE001 - isolate the failing ticket below
        log.warning(
            "batch analysis failed, retrying one by one",
            extra={"stage": "enrich", "error": repr(batch_exc), "size": len(texts)},
        )
    results: list[Analysis | Exception] = []
    for text in texts:
        try:
            results.append(analyzer.analyze([text])[0])
        except Exception as exc:  # noqa: BLE001 - recorded on the ticket
            results.append(exc)
    return results


def write_results(
    session: Session,
    *,
    claimed: Sequence[Claimed],
    results: Sequence[Analysis | Exception],
    routing: RoutingTable,
    versions: dict[str, str],
    max_attempts: int,
    assign_min_cosine: float | None = None,
    outbound: bool = False,
) -> BatchOutcome:
    """Store analyses and mark tickets done, in the caller's transaction (the caller commits).

    The caller holds the tickets for writing (row locks from the claim, or SQLite's write lock),
    so the tickets still pending at the revision that was analysed are read once and written
    with one statement per kind, not one per ticket.
    With `outbound`, each analysed ticket is queued for the outbound webhook.
    With `assign_min_cosine`, each analysed ticket also joins the nearest current cluster when
    its embedding is at least that similar to the cluster's centre."""
    outcome = BatchOutcome(claimed=len(claimed))
    now = utcnow()
    current = {
        (int(i), int(r))
        for i, r in session.execute(
            select(col(Ticket.id), col(Ticket.revision)).where(
                col(Ticket.id).in_([item.id for item in claimed]),
                col(Ticket.status) == AnalysisStatus.pending.value,
            )
        )
    }
    # Still pending at the analysed revision: anything else changed underneath us.
    still = [
        (item, result) for item, result in zip(claimed, results, strict=True)
        if (item.id, item.revision) in current
    ]  # fmt: skip
    outcome.skipped = len(claimed) - len(still)
    done = [(item, r) for item, r in still if not isinstance(r, Exception)]
    # Core statements (executemany), not ORM bulk updates by primary key: they keep the guard.
    table = Ticket.__table__  # type: ignore[attr-defined]
    guard = and_(
        table.c.id == bindparam("t_id"),
        table.c.revision == bindparam("t_revision"),
        table.c.status == AnalysisStatus.pending.value,
    )
    failures = [
        {"t_id": item.id, "t_revision": item.revision, "error": f"{type(r).__name__}: {r}"[:2000]}
        for item, r in still
        if isinstance(r, Exception)
    ]
    if failures:
        attempts = table.c.attempts + 1
        session.execute(
            update(table)
            .where(guard)
            .values(
                attempts=attempts,
                last_error=bindparam("error"),
                status=case(
                    (attempts >= max_attempts, AnalysisStatus.failed.value),
                    else_=AnalysisStatus.pending.value,
                ),
            ),
            failures,
        )
        outcome.failed = len(failures)
    done_ids = [item.id for item, _ in done]
    if done:
        session.execute(
            update(table)
            .where(guard)
            .values(
                status=AnalysisStatus.done.value,
                attempts=table.c.attempts + 1,
                last_error=None,
                language=bindparam("language"),
                language_confidence=bindparam("language_confidence"),
                language_supported=bindparam("language_supported"),
            ),
            [
                {
                    "t_id": item.id,
                    "t_revision": item.revision,
                    "language": r.language.code,
                    "language_confidence": r.language.confidence,
                    "language_supported": r.language.supported,
                }
                for item, r in done
            ],
        )
        session.execute(
            delete(TicketAnalysis)
            .where(col(TicketAnalysis.ticket_id).in_(done_ids))
            .execution_options(synchronize_session=False)
        )
        rows = [
            _analysis_row(item, r, routing=routing, versions=versions, now=now) for item, r in done
        ]
        # One INSERT per set of columns: a JSON column left out stays SQL NULL (None would be
        # stored as JSON null), and every row of one executemany must name the same columns.
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(row), []).append(row)
        for group in by_columns.values():
            session.execute(insert(TicketAnalysis), group)
        if outbound:
            from app.outbound.service import enqueue

            # In the same transaction as the analysis: delivered later, never lost.
            enqueue(session, [(item.id, item.revision) for item, _ in done])
        session.flush()
        if assign_min_cosine is not None:
            from app.clusters.service import assign_tickets

            assign_tickets(
                session,
                [(item.id, r.embedding) for item, r in done],
                min_cosine=assign_min_cosine,
            )
    outcome.done = len(done_ids)
    return outcome


def _analysis_row(
    item: Claimed,
    result: Analysis,
    *,
    routing: RoutingTable,
    versions: dict[str, str],
    now: datetime,
) -> dict[str, Any]:
    """The ticket_analysis row of one result, without the JSON columns that have no value."""
    sentiment, uxcx = result.sentiment, result.uxcx
    row: dict[str, Any] = {
        "ticket_id": item.id,
        "revision": item.revision,
        "sentiment_label": sentiment.label if sentiment else None,
        "sentiment_score": round(sentiment.score, 4) if sentiment else None,
        "uxcx_label": uxcx.label if uxcx else None,
        "uxcx_probability": uxcx.probability if uxcx else None,
        "uxcx_subcategory": uxcx.subcategory if uxcx else None,
        "uxcx_subcategory_probability": uxcx.subcategory_probability if uxcx else None,
        "team": routing.team_for(uxcx.label if uxcx else None, uxcx.subcategory if uxcx else None),
        "embedding": np.ascontiguousarray(result.embedding, dtype="<f4").tobytes(),
        "embedding_dim": int(result.embedding.shape[0]),
        "analysers": versions,
        "analysed_at": now,
    }
    if sentiment:
        row["sentiment_probabilities"] = sentiment.probabilities
        if sentiment.most_negative:
            row["sentiment_most_negative"] = asdict(sentiment.most_negative)
    if uxcx:
        row["uxcx_probabilities"] = uxcx.probabilities
        row["uxcx_evidence"] = [
            {"start": e.start, "end": e.end, "weight": e.weight} for e in uxcx.evidence
        ]
    return row
