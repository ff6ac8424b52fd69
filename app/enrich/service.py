"""Analyse stored tickets and write the results back, only onto the text that was analysed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import and_, case, delete, update
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

    With `outbound`, each analysed ticket is queued for the outbound webhook.
    With `assign_min_cosine`, each analysed ticket also joins the nearest current cluster when
    its embedding is at least that similar to the cluster's centre."""
    outcome = BatchOutcome(claimed=len(claimed))
    now = utcnow()
    done_ids: list[int] = []
    rows: list[TicketAnalysis] = []
    for item, result in zip(claimed, results, strict=True):
        current = and_(
            col(Ticket.id) == item.id,
            col(Ticket.revision) == item.revision,
            col(Ticket.status) == AnalysisStatus.pending.value,
        )
        if isinstance(result, Exception):
            attempts = col(Ticket.attempts) + 1
            res = session.execute(
                update(Ticket)
                .where(current)
                .values(
                    attempts=attempts,
                    last_error=f"{type(result).__name__}: {result}"[:2000],
                    status=case(
                        (attempts >= max_attempts, AnalysisStatus.failed.value),
                        else_=AnalysisStatus.pending.value,
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            outcome.failed += res.rowcount  # type: ignore[attr-defined]
            continue
        lang = result.language
        res = session.execute(
            update(Ticket)
            .where(current)
            .values(
                status=AnalysisStatus.done.value,
                attempts=col(Ticket.attempts) + 1,
                last_error=None,
                language=lang.code,
                language_confidence=lang.confidence,
                language_supported=lang.supported,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            outcome.skipped += 1
            continue
        done_ids.append(item.id)
        rows.append(_analysis_row(item, result, routing=routing, versions=versions, now=now))
    if done_ids:
        session.execute(
            delete(TicketAnalysis)
            .where(col(TicketAnalysis.ticket_id).in_(done_ids))
            .execution_options(synchronize_session=False)
        )
        session.add_all(rows)
        if outbound:
            from app.outbound.service import enqueue

            # In the same transaction as the analysis: delivered later, never lost.
            done = set(done_ids)
            enqueue(session, [(item.id, item.revision) for item in claimed if item.id in done])
        session.flush()
        if assign_min_cosine is not None:
            from app.clusters.service import assign_tickets

            assign_tickets(
                session,
                [
                    (item.id, result.embedding)
                    for item, result in zip(claimed, results, strict=True)
                    if item.id in set(done_ids) and not isinstance(result, Exception)
                ],
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
) -> TicketAnalysis:
    sentiment, uxcx = result.sentiment, result.uxcx
    return TicketAnalysis(
        ticket_id=item.id,
        revision=item.revision,
        sentiment_label=sentiment.label if sentiment else None,
        sentiment_score=round(sentiment.score, 4) if sentiment else None,
        sentiment_probabilities=sentiment.probabilities if sentiment else None,
        sentiment_most_negative=(
            asdict(sentiment.most_negative) if sentiment and sentiment.most_negative else None
        ),
        uxcx_label=uxcx.label if uxcx else None,
        uxcx_probability=uxcx.probability if uxcx else None,
        uxcx_probabilities=uxcx.probabilities if uxcx else None,
        uxcx_subcategory=uxcx.subcategory if uxcx else None,
        uxcx_subcategory_probability=uxcx.subcategory_probability if uxcx else None,
        uxcx_evidence=(
            [{"start": e.start, "end": e.end, "weight": e.weight} for e in uxcx.evidence]
            if uxcx
            else None
        ),
        team=routing.team_for(uxcx.label if uxcx else None, uxcx.subcategory if uxcx else None),
        embedding=np.ascontiguousarray(result.embedding, dtype="<f4").tobytes(),
        embedding_dim=int(result.embedding.shape[0]),
        analysers=versions,
        analysed_at=now,
    )
