"""The weekly schedule: once DIGEST_SCHEDULE_WEEKDAY at DIGEST_SCHEDULE_HOUR (UTC) has come,
build, keep and deliver the last complete week's digest (one per team in
DIGEST_SCHEDULE_TEAMS), exactly once per week, then send the retries that are due."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from app.core.config import Settings
from app.core.db import begin_write
from app.digests import delivery
from app.digests.models import StoredDigest
from app.digests.render import render_html, render_markdown
from app.digests.service import build_digest
from app.digests.weeks import IsoWeek
from app.routing.table import RoutingTable

log = logging.getLogger("app.digests")

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TRIGGER = "schedule"
# Any fixed 64-bit key: serialises the check-then-insert across workers on PostgreSQL.
_PG_LOCK_KEY = 0x15_5E_1E_25_D1_6E_57


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def due_week(now: datetime, settings: Settings) -> IsoWeek | None:
    """The last complete week once this week's weekday and hour (UTC) have come; else None."""
    day = settings.digest_schedule_weekday.strip().lower()[:3]
    if not day:
        return None
    now = _utc(now)
    this_week = IsoWeek.of(now)
    slot = this_week.start + timedelta(
        days=WEEKDAYS.index(day), hours=settings.digest_schedule_hour
    )
    if now < slot:
        return None
    return this_week.shift(-1)


def scheduled_teams(settings: Settings) -> list[str | None]:
    """DIGEST_SCHEDULE_TEAMS as a list; [None] (one digest for all teams) when empty."""
    teams = [t.strip() for t in settings.digest_schedule_teams.split(",") if t.strip()]
    return list(dict.fromkeys(teams)) or [None]


def _exists(session: Session, week: IsoWeek, team: str | None) -> bool:
    stmt = select(StoredDigest.id).where(
        col(StoredDigest.week) == str(week), col(StoredDigest.trigger) == TRIGGER
    )
    stmt = stmt.where(
        col(StoredDigest.team).is_(None) if team is None else col(StoredDigest.team) == team
    )
    return session.exec(stmt.limit(1)).first() is not None


def _store(
    engine: Engine,
    *,
    week: IsoWeek,
    team: str | None,
    routing: RoutingTable,
    settings: Settings,
    now: datetime,
) -> int | None:
    """Build and keep one scheduled digest unless one exists; its id, or None."""
    with Session(engine, expire_on_commit=False) as session:
        if _exists(session, week, team):
            return None
        digest = build_digest(session, week=week, team=team, routing=routing, now=now)
        session.rollback()  # end the read before taking the write lock
        lease = now + timedelta(seconds=delivery.SEND_LEASE_S)
        row = StoredDigest(
            week=str(week),
            team=team,
            trigger=TRIGGER,
            payload=json.loads(digest.model_dump_json()),
            markdown=render_markdown(digest),
            html=render_html(digest, link=settings.digest_link_base),
            generated_at=digest.generated_at,
            # An outbox: each channel pending, so a crash before `deliver` below leaves it to
            # `retry_due` (once the send lease has run out) instead of losing it.
            delivery={
                channel: {
                    "status": "pending",
                    "attempts": 0,
                    "error": None,
                    "at": None,
                    "next_attempt_at": lease.isoformat(),
                }
                for channel in delivery.configured_channels(settings)
            },
        )
        # Check again under a lock: another worker may have stored it while this one built.
        begin_write(session)
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        if _exists(session, week, team):
            session.rollback()
            return None
        session.add(row)
        session.commit()
        return row.id


def run_schedule(
    engine: Engine, settings: Settings, routing: RoutingTable, now: datetime
) -> list[int]:
    """Build, keep and deliver the due week's digests not made yet, then send due retries.

    Idempotent: a second call in the same week stores and sends nothing new. Returns the ids of
    the digests stored by this call."""
    now = _utc(now)
    created: list[int] = []
    week = due_week(now, settings)
    if week is not None:
        for team in scheduled_teams(settings):
            try:
                digest_id = _store(
                    engine, week=week, team=team, routing=routing, settings=settings, now=now
                )
            except Exception:  # noqa: BLE001 - one team's digest must not stop the others
                # Nothing stored: tried again at the next check (once a minute in the worker).
                log.exception(
                    "scheduled digest not built",
                    extra={"stage": "digest", "week": str(week), "team": team},
                )
                continue
            if digest_id is None:
                continue
            created.append(digest_id)
            if team is not None and team not in routing.teams:
                log.warning(
                    "scheduled digest for a team the routing table does not know",
                    extra={"stage": "digest", "team": team, "teams": list(routing.teams)},
                )
            log.info(
                "scheduled digest stored",
                extra={"stage": "digest", "digest": digest_id, "week": str(week), "team": team},
            )
            try:
                delivery.deliver(engine, digest_id, settings, now=now)
            except Exception:  # noqa: BLE001 - stored with every channel pending: the
                # retries send it once the send lease has run out.
                log.exception(
                    "scheduled digest not delivered",
                    extra={"stage": "digest", "digest": digest_id, "team": team},
                )
    delivery.retry_due(engine, settings, now)
    return created
