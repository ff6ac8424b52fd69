"""Queries over tickets and their analyses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from app.clusters.models import Cluster, ClusterMember
from app.core.errors import NotFound
from app.core.limits import clip_depth
from app.labels.models import TicketLabel
from app.nlp.analyzer import compose_text
from app.routing.table import RoutingTable
from app.tickets.models import Ticket, TicketAnalysis
from app.tickets.schemas import (
    AnalysisPublic,
    LabelPublic,
    LanguagePublic,
    SentimentPublic,
    TicketCluster,
    TicketPublic,
    UxCxPublic,
)


def override_label(override: Any, routing: RoutingTable) -> LabelPublic:
    """A person's correction (of a ticket or a cluster) as the label that counts."""
    return LabelPublic(
        label=override.label,
        subcategory=override.subcategory,
        team=routing.team_for(override.label, override.subcategory),
        source="override",
        author=override.author,
        note=override.note,
        updated_at=override.updated_at,
    )


def effective_label(
    analysis: TicketAnalysis | None, override: TicketLabel | None, routing: RoutingTable
) -> LabelPublic | None:
    """The label that counts: the person's correction, else the model's (current text only)."""
    if override is not None:
        return override_label(override, routing)
    if analysis is None:
        return None
    if analysis.uxcx_label is None:  # a language the models don't judge: the default team
        return LabelPublic(
            label="none", subcategory=None, team=routing.team_for(None), source="model"
        )
    return LabelPublic(
        label=analysis.uxcx_label,
        subcategory=analysis.uxcx_subcategory,
        team=routing.team_for(analysis.uxcx_label, analysis.uxcx_subcategory),
        source="model",
    )


def to_public(
    ticket: Ticket,
    analysis: TicketAnalysis | None,
    override: TicketLabel | None = None,
    routing: RoutingTable | None = None,
) -> TicketPublic:
    """Combine a ticket, its analysis and any correction into the API shape."""
    language = None
    if ticket.language is not None:
        language = LanguagePublic(
            code=ticket.language,
            confidence=ticket.language_confidence or 0.0,
            supported=bool(ticket.language_supported),
        )
    public_analysis = None
    if analysis is not None and analysis.revision != ticket.revision:
        analysis = None  # of an older text: not shown as current
    if analysis is not None:
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
            uxcx = UxCxPublic.build(
                label=analysis.uxcx_label,
                probability=analysis.uxcx_probability or 0.0,
                probabilities=analysis.uxcx_probabilities,
                subcategory=analysis.uxcx_subcategory,
                subcategory_probability=analysis.uxcx_subcategory_probability,
                problem_probability=analysis.uxcx_problem_probability,
                evidence=analysis.uxcx_evidence,
                text=compose_text(ticket.subject, ticket.body),
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
        # Rows stored before the depth limit are clipped, so one can never fail a page.
        metadata=clip_depth(ticket.meta),
        language=language,
        created_at=ticket.created_at,
        received_at=ticket.received_at,
        updated_at=ticket.updated_at,
        status=ticket.status,
        revision=ticket.revision,
        attempts=ticket.attempts,
        last_error=ticket.last_error,
        label=effective_label(analysis, override, routing) if routing else None,
        analysis=public_analysis,
    )


def _with_analysis_and_label() -> Any:
    return (
        # sqlmodel's select types at most four entities; SQLAlchemy's takes any number.
        sa_select(Ticket, TicketAnalysis, TicketLabel, ClusterMember, Cluster)
        .join(TicketAnalysis, col(TicketAnalysis.ticket_id) == col(Ticket.id), isouter=True)
        .join(TicketLabel, col(TicketLabel.ticket_id) == col(Ticket.id), isouter=True)
        .join(ClusterMember, col(ClusterMember.ticket_id) == col(Ticket.id), isouter=True)
        .join(Cluster, col(Cluster.id) == col(ClusterMember.cluster_id), isouter=True)
    )


def _cluster(member: ClusterMember | None, cluster: Cluster | None) -> TicketCluster | None:
    if member is None or cluster is None or cluster.id is None:
        return None
    return TicketCluster(
        id=cluster.id,
        title=cluster.title,
        similarity=member.similarity,
        assigned_by=member.assigned_by,
    )


def get_ticket(session: Session, *, ticket_id: int, routing: RoutingTable) -> TicketPublic:
    """One ticket with its analysis and label, or NotFound."""
    row = session.exec(_with_analysis_and_label().where(Ticket.id == ticket_id)).first()
    if row is None:
        raise NotFound(f"No ticket with id {ticket_id}.")
    ticket, analysis, override, member, cluster = row
    public = to_public(ticket, analysis, override, routing)
    public.cluster = _cluster(member, cluster)
    return public


def list_tickets(
    session: Session,
    *,
    routing: RoutingTable,
    source: str | None = None,
    channel: str | None = None,
    status: str | None = None,
    label: str | None = None,
    clustered: bool | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[Sequence[TicketPublic], int]:
    """A page of tickets, newest first, and how many match in total."""
    conditions: list[Any] = []
    if source:
        conditions.append(Ticket.source == source.strip().lower())
    if channel:
        conditions.append(Ticket.channel == channel)
    if status:
        conditions.append(Ticket.status == status)
    if label:
        # The label that counts: a correction wins over the model's label of the current text.
        model_label = case(
            (col(TicketAnalysis.revision) == col(Ticket.revision), TicketAnalysis.uxcx_label),
            else_=None,
        )
        conditions.append(func.coalesce(TicketLabel.label, model_label) == label)
    if clustered is not None:
        conditions.append(
            col(ClusterMember.ticket_id).is_not(None)
            if clustered
            else col(ClusterMember.ticket_id).is_(None)
        )
    if received_from:
        conditions.append(Ticket.received_at >= received_from)
    if received_to:
        conditions.append(Ticket.received_at < received_to)
    count_stmt = (
        select(func.count())
        .select_from(Ticket)
        .join(TicketAnalysis, col(TicketAnalysis.ticket_id) == col(Ticket.id), isouter=True)
        .join(TicketLabel, col(TicketLabel.ticket_id) == col(Ticket.id), isouter=True)
        .join(ClusterMember, col(ClusterMember.ticket_id) == col(Ticket.id), isouter=True)
    )
    total = session.exec(count_stmt.where(*conditions)).one()
    stmt = (
        _with_analysis_and_label()
        .where(*conditions)
        .order_by(col(Ticket.received_at).desc(), col(Ticket.id).desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    rows = session.exec(stmt).all()
    out = []
    for t, a, o, m, c in rows:
        public = to_public(t, a, o, routing)
        public.cluster = _cluster(m, c)
        out.append(public)
    return out, int(total)
