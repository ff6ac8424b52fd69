"""Queries over tickets and their analyses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.core.errors import NotFound
from app.nlp.analyzer import compose_text
from app.tickets.models import Ticket, TicketAnalysis
from app.tickets.schemas import (
    AnalysisPublic,
    LanguagePublic,
    SentimentPublic,
    TicketPublic,
    UxCxPublic,
)


def to_public(ticket: Ticket, analysis: TicketAnalysis | None) -> TicketPublic:
    """Combine a ticket and its analysis into the API shape."""
    language = None
    if ticket.language is not None:
        language = LanguagePublic(
            code=ticket.language,
            confidence=ticket.language_confidence or 0.0,
            supported=bool(ticket.language_supported),
        )
    public_analysis = None
    if analysis is not None and analysis.revision == ticket.revision:
        sentiment = uxcx = None
        if analysis.sentiment_label is not None:
            sentiment = SentimentPublic.build(
                label=analysis.sentiment_label,
                score=analysis.sentiment_score or 0.0,
                probabilities=analysis.sentiment_probabilities,
                most_negative=analysis.sentiment_most_negative,
                text=compose_text(ticket.subject, ticket.body),
            )
        if analysis.uxcx_label is not None:
            uxcx = UxCxPublic(
                label=analysis.uxcx_label,
                probability=analysis.uxcx_probability or 0.0,
                probabilities=analysis.uxcx_probabilities,
                subcategory=analysis.uxcx_subcategory,
            )
        note = None
        if ticket.language_supported is False:
            note = (
                f"Language {ticket.language!r} is not English: embedded for clustering, "
                "but sentiment and UX/CX were not judged."
            )
        public_analysis = AnalysisPublic(
            sentiment=sentiment,
            uxcx=uxcx,
            team=analysis.team,
            analysers=analysis.analysers,
            analysed_at=analysis.analysed_at,
            note=note,
        )
    return TicketPublic(
        id=ticket.id,
        source=ticket.source,
        external_id=ticket.external_id,
        channel=ticket.channel,
        subject=ticket.subject,
        body=ticket.body,
        author_hash=ticket.author_hash,
        metadata=ticket.meta,
        language=language,
        created_at=ticket.created_at,
        received_at=ticket.received_at,
        updated_at=ticket.updated_at,
        status=ticket.status,
        revision=ticket.revision,
        attempts=ticket.attempts,
        last_error=ticket.last_error,
        analysis=public_analysis,
    )


def get_ticket(session: Session, *, ticket_id: int) -> TicketPublic:
    """One ticket with its analysis, or NotFound."""
    row = session.exec(
        select(Ticket, TicketAnalysis)
        .join(TicketAnalysis, col(TicketAnalysis.ticket_id) == col(Ticket.id), isouter=True)
        .where(Ticket.id == ticket_id)
    ).first()
    if row is None:
        raise NotFound(f"No ticket with id {ticket_id}.")
    return to_public(*row)


def list_tickets(
    session: Session,
    *,
    source: str | None = None,
    channel: str | None = None,
    status: str | None = None,
    label: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[Sequence[TicketPublic], int]:
    """A page of tickets, newest first, and how many match in total."""
    conditions = []
    if source:
        conditions.append(Ticket.source == source.strip().lower())
    if channel:
        conditions.append(Ticket.channel == channel)
    if status:
        conditions.append(Ticket.status == status)
    if label:
        conditions.append(TicketAnalysis.uxcx_label == label)
        conditions.append(TicketAnalysis.revision == Ticket.revision)
    if received_from:
        conditions.append(Ticket.received_at >= received_from)
    if received_to:
        conditions.append(Ticket.received_at < received_to)
    join_on = col(TicketAnalysis.ticket_id) == col(Ticket.id)
    count_stmt = select(func.count()).select_from(Ticket)
    if label:
        count_stmt = count_stmt.join(TicketAnalysis, join_on)
    total = session.exec(count_stmt.where(*conditions)).one()
    stmt = (
        select(Ticket, TicketAnalysis)
        .join(TicketAnalysis, join_on, isouter=not label)
        .where(*conditions)
        .order_by(col(Ticket.received_at).desc(), col(Ticket.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    rows = session.exec(stmt).all()
    return [to_public(t, a) for t, a in rows], int(total)
