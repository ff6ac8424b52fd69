"""Build the weekly digest: headline, top, rising, new and quiet clusters, per-team sections."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlmodel import Session, col

from app.clusters.models import Cluster, ClusterLabel, ClusterMember
from app.clusters.service import effective_label as cluster_label
from app.core.db import utcnow
from app.core.errors import InvalidInput
from app.digests.models import StoredDigest
from app.digests.schemas import (
    Digest,
    DigestCluster,
    DigestRules,
    DigestWeek,
    Headline,
    Quote,
    TeamSection,
)
from app.digests.weeks import IsoWeek
from app.labels.models import TicketLabel
from app.routing.table import RoutingTable
from app.tickets.models import Ticket, TicketAnalysis

RULES = DigestRules(
    top=10,
    rising_min_count=10,
    rising_min_growth=2.0,
    new_within_weeks=3,
    quiet_min_previous_mean=3.0,
    quiet_max_share=0.2,
    trend_weeks=8,
)
QUOTES = 3
QUOTE_CHARS = 280


@dataclass(slots=True)
class _Message:
    id: int
    week: IsoWeek
    created_at: datetime
    source: str
    channel: str
    sentiment: str | None
    score: float | None
    label: str | None  # the label that counts: a correction, else the model's
    team: str | None
    cluster_id: int | None
    similarity: float


@dataclass(slots=True)
class _ClusterStats:
    cluster: Cluster
    label: str
    team: str
    by_week: dict[IsoWeek, int] = field(default_factory=lambda: defaultdict(int))
    this_week: list[_Message] = field(default_factory=list)


def _messages(
    session: Session, *, start: datetime, end: datetime, routing: RoutingTable
) -> list[_Message]:
    # Columns, not ORM objects, and no texts: the weeks can hold many thousands of messages;
    # only the quoted ones are read in full (_quotes).
    stmt = (
        select(
            col(Ticket.id),
            col(Ticket.created_at),
            col(Ticket.source),
            col(Ticket.channel),
            col(TicketAnalysis.sentiment_label),
            col(TicketAnalysis.sentiment_score),
            col(TicketAnalysis.uxcx_label),
            col(TicketAnalysis.uxcx_subcategory),
            col(TicketLabel.label),
            col(TicketLabel.subcategory),
            col(ClusterMember.cluster_id),
            col(ClusterMember.similarity),
        )
        .join(
            TicketAnalysis,
            and_(
                col(TicketAnalysis.ticket_id) == col(Ticket.id),
                col(TicketAnalysis.revision) == col(Ticket.revision),
            ),
            isouter=True,
        )
        .join(TicketLabel, col(TicketLabel.ticket_id) == col(Ticket.id), isouter=True)
        .join(ClusterMember, col(ClusterMember.ticket_id) == col(Ticket.id), isouter=True)
        .where(col(Ticket.created_at) >= start, col(Ticket.created_at) < end)
    )
    out = []
    for row in session.execute(stmt).all():
        (tid, created, source, channel, sentiment, score, model_label, model_sub,
         override, override_sub, cluster_id, similarity) = row  # fmt: skip
        label, sub = (override, override_sub) if override else (model_label, model_sub)
        out.append(
            _Message(
                id=tid,
                week=IsoWeek.of(created),
                created_at=created,
                source=source,
                channel=channel,
                sentiment=sentiment,
                score=score,
                label=label,
                team=routing.team_for(label, sub) if label else None,
                cluster_id=cluster_id,
                similarity=similarity or 0.0,
            )
        )
    return out


def _sentiment(messages: list[_Message]) -> tuple[float | None, float | None]:
    scored = [m for m in messages if m.sentiment is not None]
    if not scored:
        return None, None
    negative = sum(m.sentiment == "negative" for m in scored) / len(scored)
    mean = sum(m.score or 0.0 for m in scored) / len(scored)
    return round(negative, 4), round(mean, 4)


def _week_row(week: IsoWeek, messages: list[_Message]) -> DigestWeek:
    labels: dict[str, int] = defaultdict(int)
    for m in messages:
        labels[m.label or "unlabelled"] += 1
    negative, mean = _sentiment(messages)
    return DigestWeek(
        week=str(week),
        messages=len(messages),
        ux=labels["UX"],
        cx=labels["CX"],
        none=labels["none"],
        unlabelled=labels["unlabelled"],
        negative_share=negative,
        mean_sentiment=mean,
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _quotes(session: Session, messages: list[_Message]) -> list[Quote]:
    """The most typical messages (nearest the centre), no two alike."""
    ranked = sorted(messages, key=lambda m: (-m.similarity, m.id))[: QUOTES * 4]
    texts = {
        tid: f"{subject}\n{body}" if subject else body
        for tid, subject, body in session.execute(
            select(col(Ticket.id), col(Ticket.subject), col(Ticket.body)).where(
                col(Ticket.id).in_([m.id for m in ranked])
            )
        ).all()
    }
    quotes: list[Quote] = []
    seen: set[str] = set()
    for m in ranked:
        text = " ".join(texts.get(m.id, "").split())
        key = text.lower()[:120]
        if not text or key in seen:
            continue
        seen.add(key)
        if len(text) > QUOTE_CHARS:
            text = text[: QUOTE_CHARS - 1].rstrip() + "…"
        quotes.append(
            Quote(
                ticket_id=m.id,
                text=text,
                source=m.source,
                channel=m.channel,
                created_at=m.created_at,
                sentiment=m.sentiment,
            )
        )
        if len(quotes) == QUOTES:
            break
    return quotes


def _public(
    session: Session, stats: _ClusterStats, week: IsoWeek, weeks: list[IsoWeek]
) -> DigestCluster:
    count = stats.by_week.get(week, 0)
    before = week.span(5)[:-1]
    previous_mean = sum(stats.by_week.get(w, 0) for w in before) / len(before)
    negative, mean = _sentiment(stats.this_week)
    return DigestCluster(
        id=stats.cluster.id or 0,
        title=stats.cluster.title,
        key_phrases=list(stats.cluster.key_phrases or [])[:6],
        label=stats.label,
        team=stats.team,
        count=count,
        previous_mean=round(previous_mean, 2),
        growth=round(count / previous_mean, 2) if previous_mean else None,
        trend=[stats.by_week.get(w, 0) for w in weeks],
        trend_weeks=[str(w) for w in weeks],
        negative_share=negative,
        mean_sentiment=mean,
        first_seen=stats.cluster.first_seen,
        quotes=_quotes(session, stats.this_week) if count else [],
    )


def check_team(team: str | None, routing: RoutingTable) -> str | None:
    """`team` when the routing table knows it (None stays None); 422 naming the teams if not."""
    if team and team not in routing.teams:
        raise InvalidInput(
            f"team {team!r} is not in the routing table; teams: {', '.join(routing.teams)}.",
            code="unknown_team",
        )
    return team or None


def build_digest(
    session: Session,
    *,
    week: IsoWeek,
    team: str | None,
    routing: RoutingTable,
    now: datetime | None = None,
) -> Digest:
    """The digest of `week` (optionally one team's), from the stored analyses and clusters."""
    weeks = week.span(RULES.trend_weeks)
    messages = _messages(session, start=weeks[0].start, end=week.end, routing=routing)
    if team is not None:
        scoped = [m for m in messages if m.team == team]
    else:
        scoped = messages

    by_week: dict[IsoWeek, list[_Message]] = defaultdict(list)
    for m in scoped:
        by_week[m.week].append(m)
    weekly = [_week_row(w, by_week.get(w, [])) for w in weeks]
    this, previous = weekly[-1], weekly[-2]
    labelled = this.ux + this.cx + this.none
    headline = Headline(
        messages=this.messages,
        previous_messages=previous.messages,
        change=(
            round((this.messages - previous.messages) / previous.messages, 4)
            if previous.messages
            else None
        ),
        negative_share=this.negative_share,
        ux_share=_share(this.ux, labelled),
        cx_share=_share(this.cx, labelled),
        none_share=_share(this.none, labelled),
    )

    stats = _cluster_stats(session, messages, week=week, routing=routing)
    if team is not None:
        stats = {cid: s for cid, s in stats.items() if s.team == team}
    # Sections list problems: clusters of thanks, praise and chit-chat (label none) only count
    # in the headline.
    stats = {cid: s for cid, s in stats.items() if s.label != "none"}
    clusters = {cid: _public(session, s, week, weeks) for cid, s in stats.items()}
    new_since = week.shift(-(RULES.new_within_weeks - 1)).start

    def is_new(c: DigestCluster) -> bool:
        return c.count > 0 and c.first_seen is not None and c.first_seen >= new_since

    by_volume = sorted(
        (c for c in clusters.values() if c.count > 0), key=lambda c: (-c.count, c.id)
    )
    new = [c for c in by_volume if is_new(c)]
    rising = sorted(
        (
            c
            for c in by_volume
            if not is_new(c)
            and c.count >= RULES.rising_min_count
            and (c.growth is None or c.growth >= RULES.rising_min_growth)
        ),
        key=lambda c: (-(c.growth or float("inf")), -c.count, c.id),
    )
    quiet = sorted(
        (
            c
            for c in clusters.values()
            if c.previous_mean >= RULES.quiet_min_previous_mean
            and c.count <= RULES.quiet_max_share * c.previous_mean
        ),
        key=lambda c: (-c.previous_mean, c.id),
    )
    teams: dict[str, list[DigestCluster]] = defaultdict(list)
    for c in by_volume:
        teams[c.team].append(c)
    sections = sorted(
        (
            TeamSection(team=t, messages=sum(c.count for c in cs), clusters=[c.id for c in cs])
            for t, cs in teams.items()
        ),
        key=lambda s: (-s.messages, s.team),
    )
    return Digest(
        week=str(week),
        start=week.start,
        end=week.end,
        team=team,
        generated_at=now or utcnow(),
        headline=headline,
        weekly=weekly,
        top=by_volume[: RULES.top],
        rising=rising,
        new=new,
        quiet=quiet,
        teams=sections,
        rules=RULES,
    )


def store_digest(
    session: Session,
    *,
    week: IsoWeek,
    team: str | None,
    routing: RoutingTable,
    trigger: str,
    link: str | None = None,
) -> StoredDigest:
    """Build, render and keep a digest (JSON, Markdown and HTML as generated)."""
    from app.digests.render import render_html, render_markdown

    digest = build_digest(session, week=week, team=team, routing=routing)
    row = StoredDigest(
        week=str(week),
        team=team,
        trigger=trigger,
        payload=json.loads(digest.model_dump_json()),
        markdown=render_markdown(digest),
        html=render_html(digest, link=link),
        generated_at=digest.generated_at,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def _cluster_stats(
    session: Session, messages: list[_Message], *, week: IsoWeek, routing: RoutingTable
) -> dict[int, _ClusterStats]:
    ids = sorted({m.cluster_id for m in messages if m.cluster_id is not None})
    if not ids:
        return {}
    rows: Any = session.execute(
        select(Cluster, ClusterLabel)
        .join(ClusterLabel, col(ClusterLabel.cluster_id) == col(Cluster.id), isouter=True)
        .where(col(Cluster.id).in_(ids), col(Cluster.active).is_(True))
    ).all()
    stats: dict[int, _ClusterStats] = {}
    for cluster, override in rows:
        label = cluster_label(cluster, override, routing)
        stats[cluster.id] = _ClusterStats(
            cluster=cluster,
            label=label.label if label else "none",
            team=(label.team if label else None) or routing.team_for(None) or "unrouted",
        )
    for m in messages:
        if m.cluster_id in stats:
            s = stats[m.cluster_id]
            s.by_week[m.week] += 1
            if m.week == week:
                s.this_week.append(m)
    return stats
