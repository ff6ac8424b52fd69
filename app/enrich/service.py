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

# Characters of text per analyser call. The analysers keep a call's token states (for sentiment
# and the UX/CX evidence: about 1.9 KB per character of English text) until the call returns,
# so this bounds the worker's peak memory whatever the batch. Measured on 2,048 support tweets
# (CPU time per text): 64,000 the same as whole batches of 512, 32,000 4% more, 16,000 10% more.
ANALYSE_SLICE_CHARS = 64_000


@dataclass(frozen=True, slots=True)
class Claimed:
    """The parts of a claimed ticket the analysis needs (detached from any session)."""

    id: int
    revision: int
    text: str
    attempts: int = 0  # failed analyses so far: such a ticket is analysed on its own


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
        out.append(
            Claimed(
                id=t.id,
                revision=t.revision,
                text=compose_text(t.subject, t.body),
                attempts=t.attempts,
            )
        )
    return out


def slices(claimed: Sequence[Claimed], *, max_chars: int) -> list[list[int]]:
    """Positions of `claimed`, shortest text first, cut into slices of at most `max_chars`
    characters (a longer text alone). A ticket that failed before is a slice of its own, so a
    text that breaks an analyser never fails a slice of good ones twice."""
    order = sorted(range(len(claimed)), key=lambda k: len(claimed[k].text))
    out: list[list[int]] = [[k] for k in order if claimed[k].attempts > 0]
    current: list[int] = []
    used = 0
    for k in order:
        if claimed[k].attempts > 0:
            continue
        size = len(claimed[k].text)
        if current and used + size > max_chars:
            out.append(current)
            current, used = [], 0
        current.append(k)
        used += size
    if current:
        out.append(current)
    return out


def analyse(
    analyzer: Analyzer, claimed: Sequence[Claimed], *, slice_chars: int = ANALYSE_SLICE_CHARS
) -> list[Analysis | Exception]:
    """Analyse a batch in slices of similar length (`slices`); a text that raises gets its
    exception as its result, and only its slice is analysed again, halved until the text that
    fails is alone: the other slices are never re-run, and neither is most of its own."""
    results: list[Analysis | Exception | None] = [None] * len(claimed)
    for positions in slices(claimed, max_chars=slice_chars):
        _analyse_isolating(analyzer, claimed, positions, results)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _analyse_isolating(
    analyzer: Analyzer,
    claimed: Sequence[Claimed],
    positions: list[int],
    results: list[Analysis | Exception | None],
) -> None:
    """Fill `results` at `positions`, splitting the slice in halves while it raises."""
    try:
        analyses = analyzer.analyze([claimed[k].text for k in positions])
    except Exception as exc:  # noqa: BLE001 - isolated below, recorded on the ticket
        if len(positions) == 1:
            results[positions[0]] = exc
            return
        log.warning(
            "slice analysis failed, halving it to find the ticket",
            extra={"stage": "enrich", "error": repr(exc), "size": len(positions)},
        )
        half = len(positions) // 2
        _analyse_isolating(analyzer, claimed, positions[:half], results)
        _analyse_isolating(analyzer, claimed, positions[half:], results)
        return
    for k, analysis in zip(positions, analyses, strict=True):
        results[k] = analysis


def store(
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
    """`write_results` for the whole batch in a savepoint; when that raises, each ticket in a
    savepoint of its own, and a ticket whose write raises is recorded as a failed attempt with
    that error, so one unwritable result never fails or re-analyses the rest of the batch."""
    options: dict[str, Any] = {
        "routing": routing,
        "versions": versions,
        "max_attempts": max_attempts,
        "assign_min_cosine": assign_min_cosine,
        "outbound": outbound,
    }
    try:
        with session.begin_nested():
            return write_results(session, claimed=claimed, results=results, **options)
    except Exception as exc:  # noqa: BLE001 - isolated below, recorded on the ticket
        log.warning(
            "batch write failed, writing one ticket at a time",
            extra={"stage": "enrich", "error": repr(exc), "size": len(claimed)},
        )
    outcome = BatchOutcome(claimed=len(claimed))
    for item, result in zip(claimed, results, strict=True):
        try:
            with session.begin_nested():
                one = write_results(session, claimed=[item], results=[result], **options)
        except Exception as exc:  # noqa: BLE001 - recorded on the ticket
            log.warning(
                "ticket write failed",
                extra={"stage": "enrich", "ticket_id": item.id, "error": repr(exc)},
            )
            with session.begin_nested():
                one = write_results(session, claimed=[item], results=[exc], **options)
        outcome.done += one.done
        outcome.failed += one.failed
        outcome.skipped += one.skipped
    return outcome


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
        "uxcx_problem_probability": uxcx.problem_probability if uxcx else None,
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
