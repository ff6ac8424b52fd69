"""The durable work queue: pending tickets in the database, claimed in batches.

A batch is bounded by text, not only by count: at most `max_tickets` tickets and `max_chars`
characters of subject and body (always at least one ticket, however long). What a batch holds
in memory while it is analysed (the token states kept for sentiment and evidence, about 1.9 KB
per character of English text) and how long it takes both grow with its characters, not with
its count: 240 tickets of 20,000 characters fit in one batch of 512 and took the worker to
7.9 GB.

Two lanes, each oldest first: short tickets (a body of at most SHORT_BODY_CHARS characters)
and long ones. When both have work, a worker serves them in turn (see `Worker`), so a flood of
long tickets delays a short one by at most the batch in progress plus its own short batch, and a
flood of short tickets cannot starve a long one either. Each lane has a partial index on the
pending rows (migration 0010), so finding the oldest short ticket behind thousands of long
ones reads the index, not the long bodies.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from app.tickets.models import AnalysisStatus, Ticket

# A body up to this many characters is a short ticket (a tweet, a chat line, most e-mails: up to
# about two encoder windows). The same number is in migration 0010's partial indexes and must
# stay equal to it there, or the lane queries cannot use them.
SHORT_BODY_CHARS = 2_000


class Lane(StrEnum):
    """Which pending tickets a batch is taken from."""

    short = "short"
    long = "long"


# Spelled exactly as the partial indexes' predicates (literals, not parameters): SQLite and
# PostgreSQL use a partial index only when the query's condition matches its own.
_LANE_WHERE = {
    Lane.short: f"status = 'pending' AND length(body) <= {SHORT_BODY_CHARS}",
    Lane.long: f"status = 'pending' AND length(body) > {SHORT_BODY_CHARS}",
}
_LANE_INDEX = {Lane.short: "ix_ticket_pending_short", Lane.long: "ix_ticket_pending_long"}


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


def _lane_candidates(
    session: Session, lane: Lane, *, limit: int, lock: bool
) -> list[tuple[int, int]]:
    """(id, characters of subject and body) of the oldest `limit` pending tickets of a lane."""
    postgres = session.get_bind().dialect.name == "postgresql"
    # SQLite's planner prefers the (status, id) index without statistics, and would then read
    # every long body ahead of the first short one: name the lane's index.
    hint = "" if postgres else f" INDEXED BY {_LANE_INDEX[lane]}"
    sql = (
        "SELECT id, length(body) + coalesce(length(subject), 0) FROM ticket"
        f"{hint} WHERE {_LANE_WHERE[lane]} ORDER BY id LIMIT :limit"
    )
    if lock:
        sql += " FOR UPDATE SKIP LOCKED"
    rows = session.execute(text(sql), {"limit": limit}).all()
    return [(int(i), int(n)) for i, n in rows]


def within_budget(candidates: Sequence[tuple[int, int]], *, max_chars: int) -> list[int]:
    """Ids of the longest prefix of `candidates` whose characters fit `max_chars`; the first
    one always, so a ticket longer than the budget is still analysed (alone)."""
    chosen: list[int] = []
    used = 0
    for ticket_id, chars in candidates:
        if chosen and used + chars > max_chars:
            break
        chosen.append(ticket_id)
        used += chars
    return chosen


def _lane_limit(lane: Lane, *, max_tickets: int, max_chars: int) -> int:
    """How many candidates can fit: every long ticket has more than SHORT_BODY_CHARS."""
    if lane is Lane.long:
        return max(1, min(max_tickets, max_chars // (SHORT_BODY_CHARS + 1) + 1))
    return max_tickets


def claim(
    session: Session,
    *,
    lanes: Sequence[Lane],
    max_tickets: int,
    max_chars: int,
    lock: bool,
) -> tuple[Lane | None, Sequence[Ticket]]:
    """The next batch from the first of `lanes` that has pending work, oldest first, within
    `max_tickets` and `max_chars`; (None, []) when every lane is empty.

    `lock` (PostgreSQL): the tickets are locked FOR UPDATE SKIP LOCKED until the session's
    transaction ends. The candidates are locked inside a savepoint; when fewer fit the budget,
    rolling the savepoint back releases them all and only the chosen ones are locked again, so
    other workers are never kept from tickets this batch does not take. Without `lock` (SQLite,
    one writer at a time) the tickets are only read: results are written back only onto the
    revision that was analysed.
    """
    for lane in lanes:
        limit = _lane_limit(lane, max_tickets=max_tickets, max_chars=max_chars)
        ids: list[int] = []
        for _ in range(3):  # another worker can take the chosen tickets between two statements
            if not lock:
                ids = within_budget(
                    _lane_candidates(session, lane, limit=limit, lock=False), max_chars=max_chars
                )
                break
            savepoint = session.begin_nested()
            candidates = _lane_candidates(session, lane, limit=limit, lock=True)
            ids = within_budget(candidates, max_chars=max_chars)
            if len(ids) == len(candidates):
                savepoint.commit()  # the locks stay with the enclosing transaction
                break
            savepoint.rollback()
            stmt = (
                select(col(Ticket.id))
                .where(col(Ticket.id).in_(ids), col(Ticket.status) == AnalysisStatus.pending.value)
                .with_for_update(skip_locked=True)
            )
            ids = list(session.exec(stmt).all())  # type: ignore[arg-type]
            if ids:
                break
        if ids:
            tickets = session.exec(
                select(Ticket).where(col(Ticket.id).in_(ids)).order_by(col(Ticket.id))
            ).all()
            return lane, tickets
    return None, []
