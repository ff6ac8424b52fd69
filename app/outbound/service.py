"""Outbound webhook: analysed tickets POSTed to OUTBOUND_WEBHOOK_URL, signed, retried, recorded.

Rows are written in the transaction that stores the analysis (an outbox), so a crash never loses
one. A sender loop in each worker sends what is due in three steps, none of which holds a
transaction over the network:

1. claim: one short transaction (FOR UPDATE SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on
   SQLite) takes a batch of due rows, counts the attempt, bumps the row's `claims` counter and
   pushes `next_attempt_at` out by a lease long enough for the whole batch to be sent;
2. send: each row's payload is built in a short read, then POSTed with no transaction open;
3. record: each outcome in its own short transaction, only where `claims` still holds the
   value this claim set. A row whose outcome cannot be recorded keeps its lease and is sent
   again when it runs out: delivery is at least once, and receivers drop repeats by the
   X-IssueLens-Delivery header (one id per ticket revision, the same on every retry).

A row whose payload cannot be built (a stored ticket that will never serialise) is failed for
good with the error recorded, and the rest of the batch goes on. Receivers verify

    X-IssueLens-Signature: sha256=<hex HMAC-SHA256(secret, X-IssueLens-Timestamp + "." + body)>
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from app.core import retry as core_retry
from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, NotFound
from app.ingest.pii import redact_metadata
from app.outbound.models import OutboundDelivery, OutboundStatus
from app.outbound.schemas import OutboundDeliveriesPublic, OutboundDeliveryPublic
from app.routing.table import RoutingTable
from app.tickets import service as tickets_service

log = logging.getLogger("app.outbound")

MAX_BACKOFF_S = 3600.0
# What a claim's lease adds to the batch's sends: reading the tickets and recording outcomes.
LEASE_MARGIN_S = 30.0
# The sender loop's wait after a round that failed as a whole (the database unreachable).
MAX_ERROR_WAIT_S = 60.0
MAX_ERROR_CHARS = 2000
USER_AGENT = "IssueLens-Webhook/0.1"


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """Where and how analysed tickets are sent."""

    url: str
    secret: str
    max_attempts: int = 8
    backoff_s: float = 2.0
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery taken for sending: what the send needs, and the claim that took it."""

    id: int
    ticket_id: int
    revision: int
    event: str
    attempts: int  # including this one
    token: int  # the row's `claims` after this claim: only its holder records the outcome
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one claimed delivery came to, as it is written to its row."""

    status: OutboundStatus
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None  # None: left as the claim set it
    delivered_at: datetime | None = None


def enqueue(session: Session, items: Sequence[tuple[int, int]]) -> None:
    """Add one pending delivery per (ticket id, revision), in the caller's transaction."""
    now = utcnow()
    session.add_all(
        OutboundDelivery(ticket_id=tid, revision=rev, next_attempt_at=now) for tid, rev in items
    )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-IssueLens-Signature value for a body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def backoff(attempts: int, base_s: float) -> float:
    """Seconds before the next try: core.retry.backoff from `base_s`, capped at an hour."""
    return core_retry.backoff(attempts, base_s, MAX_BACKOFF_S)


def send_budget_s(config: OutboundConfig) -> float:
    """The longest one POST is allowed: connecting, sending and reading, each up to timeout_s."""
    return 3 * config.timeout_s


def lease_s(config: OutboundConfig, limit: int) -> float:
    """How long a claimed batch of `limit` rows is left to its sender before others may take it."""
    return LEASE_MARGIN_S + limit * send_budget_s(config)


def _post(config: OutboundConfig, claim: Claim, body: bytes) -> tuple[int | None, str | None]:
    stamp = str(int(time.time()))
    request = urllib.request.Request(
        config.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-IssueLens-Event": claim.event,
            # The same on every retry of this ticket revision: receivers drop repeats by it.
            "X-IssueLens-Delivery": str(claim.id),
            "X-IssueLens-Timestamp": stamp,
            "X-IssueLens-Signature": sign(config.secret, stamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:  # noqa: S310
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: an answer that is not HTTP (BadStatusLine, too many headers...).
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:MAX_ERROR_CHARS]


def _claim(engine: Engine, *, config: OutboundConfig, limit: int) -> list[Claim]:
    """Take up to `limit` due rows in one short transaction; the lease keeps others off them."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_s(config, limit))
    claims: list[Claim] = []
    given_up: list[OutboundDelivery] = []
    with Session(engine, expire_on_commit=False) as session:
        # A writer from the start: two SQLite senders never read the same due rows.
        begin_write(session)
        stmt = (
            select(OutboundDelivery)
            .where(col(OutboundDelivery.status) == OutboundStatus.pending.value)
            .where(col(OutboundDelivery.next_attempt_at) <= now)
            .order_by(col(OutboundDelivery.next_attempt_at), col(OutboundDelivery.id))
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        for row in session.exec(stmt).all():
            assert row.id is not None
            row.claims += 1
            if row.attempts >= config.max_attempts:
                # The last try was started but its outcome never recorded (the sender died, or
                # could not write): stop here rather than send the same thing forever.
                row.status = OutboundStatus.failed.value
                row.last_error = (
                    f"gave up after {row.attempts} attempts; the last outcome was never "
                    f"recorded ({row.last_error or 'no error recorded'})"
                )[:MAX_ERROR_CHARS]
                given_up.append(row)
            else:
                row.attempts += 1
                row.next_attempt_at = lease_until
                claims.append(
                    Claim(
                        id=row.id,
                        ticket_id=row.ticket_id,
                        revision=row.revision,
                        event=row.event,
                        attempts=row.attempts,
                        token=row.claims,
                        lease_until=lease_until,
                    )
                )
            session.add(row)
        session.commit()
    for row in given_up:
        _log_failed(row.id or 0, row.ticket_id, row.attempts, row.last_error or "")
    return claims


def _body(engine: Engine, claim: Claim, routing: RoutingTable) -> bytes | Outcome:
    """The JSON body to POST, or the outcome when there is nothing to send."""
    nothing_sent = claim.attempts - 1
    with Session(engine) as session:
        try:
            ticket = tickets_service.get_ticket(session, ticket_id=claim.ticket_id, routing=routing)
        except NotFound:
            return Outcome(
                OutboundStatus.superseded,
                nothing_sent,
                last_error="the ticket no longer exists",
            )
    # The session is closed: nothing below holds a transaction.
    if ticket.revision != claim.revision:
        # Its text changed and it will be analysed again; that analysis is sent instead.
        return Outcome(OutboundStatus.superseded, nothing_sent)
    body = json.loads(ticket.model_dump_json())
    # Metadata is redacted at ingest; rows stored before that are redacted on their way out.
    body["metadata"] = redact_metadata(body["metadata"])
    payload = {"event": claim.event, "delivery_id": claim.id, "ticket": body}
    return json.dumps(payload, separators=(",", ":")).encode()


def _attempt(
    engine: Engine, claim: Claim, *, config: OutboundConfig, routing: RoutingTable
) -> Outcome | None:
    """Build and send one claimed delivery; its outcome, or None to leave it to its lease."""
    try:
        body = _body(engine, claim, routing)
    except SQLAlchemyError:
        # The database, not the row: the lease runs out and the row is tried again.
        log.exception(
            "outbound delivery could not be read",
            extra={"stage": "outbound", "delivery": claim.id, "ticket": claim.ticket_id},
        )
        return None
    except Exception as exc:  # noqa: BLE001 - a row that never serialises must not stop the rest
        error = f"payload could not be built: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        log.error(
            "outbound delivery failed for good: its payload could not be built",
            exc_info=True,
            extra={
                "stage": "outbound",
                "delivery": claim.id,
                "ticket": claim.ticket_id,
                "error": error,
            },
        )
        return Outcome(OutboundStatus.failed, claim.attempts - 1, last_error=error)
    if isinstance(body, Outcome):
        return body
    status, refused = _post(config, claim, body)
    if status is not None and 200 <= status < 300:
        return Outcome(
            OutboundStatus.delivered,
            claim.attempts,
            last_status_code=status,
            delivered_at=utcnow(),
        )
    error = refused or f"HTTP {status}"
    if claim.attempts >= config.max_attempts:
        _log_failed(claim.id, claim.ticket_id, claim.attempts, error)
        return Outcome(
            OutboundStatus.failed, claim.attempts, last_status_code=status, last_error=error
        )
    wait = backoff(claim.attempts, config.backoff_s)
    return Outcome(
        OutboundStatus.pending,
        claim.attempts,
        last_status_code=status,
        last_error=error,
        next_attempt_at=utcnow() + timedelta(seconds=wait),
    )


def _log_failed(delivery_id: int, ticket_id: int, attempts: int, error: str) -> None:
    log.warning(
        "outbound delivery failed for good",
        extra={
            "stage": "outbound",
            "delivery": delivery_id,
            "ticket": ticket_id,
            "attempts": attempts,
            "error": error,
        },
    )


def _record(engine: Engine, claim: Claim, outcome: Outcome) -> bool:
    """Write one outcome in its own transaction; False when the claim was no longer held."""
    values: dict[str, object] = {
        "status": outcome.status.value,
        "attempts": outcome.attempts,
        "last_error": outcome.last_error,
    }
    if outcome.status is not OutboundStatus.superseded:
        values["last_status_code"] = outcome.last_status_code
    if outcome.next_attempt_at is not None:
        values["next_attempt_at"] = outcome.next_attempt_at
    if outcome.delivered_at is not None:
        values["delivered_at"] = outcome.delivered_at
    with engine.begin() as conn:
        result = conn.execute(
            update(OutboundDelivery)
            .where(
                col(OutboundDelivery.id) == claim.id,
                col(OutboundDelivery.claims) == claim.token,
                col(OutboundDelivery.status) == OutboundStatus.pending.value,
            )
            .values(**values)
        )
    return result.rowcount == 1


def _release(engine: Engine, claim: Claim) -> None:
    """Hand an unsent claim back: due now, its attempt not counted."""
    with engine.begin() as conn:
        conn.execute(
            update(OutboundDelivery)
            .where(
                col(OutboundDelivery.id) == claim.id,
                col(OutboundDelivery.claims) == claim.token,
                col(OutboundDelivery.status) == OutboundStatus.pending.value,
            )
            .values(attempts=claim.attempts - 1, next_attempt_at=utcnow())
        )


def send_due(
    engine: Engine, *, config: OutboundConfig, routing: RoutingTable, limit: int = 20
) -> int:
    """Send up to `limit` due deliveries and record each outcome; returns how many were tried."""
    claims = _claim(engine, config=config, limit=limit)
    budget = timedelta(seconds=send_budget_s(config))
    for i, claim in enumerate(claims):
        if utcnow() + budget > claim.lease_until:
            # Sending now could outlast the lease and overlap another sender's claim.
            log.warning(
                "outbound batch ran past its lease; the rest is handed back",
                extra={"stage": "outbound", "left": len(claims) - i},
            )
            for rest in claims[i:]:
                try:
                    _release(engine, rest)
                except SQLAlchemyError:
                    log.exception("outbound claim not handed back", extra={"stage": "outbound"})
            break
        outcome = _attempt(engine, claim, config=config, routing=routing)
        if outcome is None:
            continue
        try:
            recorded = _record(engine, claim, outcome)
        except Exception:  # noqa: BLE001 - one unrecorded outcome must not cost the others
            log.exception(
                "outbound outcome not recorded; sent again when its lease runs out",
                extra={"stage": "outbound", "delivery": claim.id, "outcome": outcome.status},
            )
            continue
        if not recorded:
            log.warning(
                "outbound outcome not recorded: another sender claimed the delivery after this "
                "claim's lease ran out",
                extra={"stage": "outbound", "delivery": claim.id, "outcome": outcome.status},
            )
    return len(claims)


class OutboundSender:
    """A loop beside the worker that sends due deliveries until stopped."""

    def __init__(
        self, *, engine: Engine, config: OutboundConfig, routing: RoutingTable, poll_s: float = 1.0
    ) -> None:
        self.engine, self.config, self.routing, self.poll_s = engine, config, routing, poll_s
        self._stop = threading.Event()

    def run(self) -> None:
        """Send what is due; sleep `poll_s` when nothing is, longer after repeated errors."""
        log.info("outbound sender started", extra={"stage": "outbound", "url": self.config.url})
        errors = 0
        while not self._stop.is_set():
            try:
                sent = send_due(self.engine, config=self.config, routing=self.routing)
                errors = 0
            except Exception:  # noqa: BLE001 - a database hiccup must not stop deliveries
                errors += 1
                log.exception(
                    "outbound sender error", extra={"stage": "outbound", "errors": errors}
                )
                self._stop.wait(core_retry.backoff(errors, self.poll_s, MAX_ERROR_WAIT_S))
                continue
            if not sent:
                self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Finish the current round and return."""
        self._stop.set()

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, name="outbound-sender", daemon=True)
        thread.start()
        return thread


def list_deliveries(
    session: Session,
    *,
    status: OutboundStatus | None,
    ticket_id: int | None,
    limit: int,
    offset: int,
) -> OutboundDeliveriesPublic:
    """Deliveries, newest first, filtered by status and ticket."""
    stmt = select(OutboundDelivery)
    count_stmt = select(func.count()).select_from(OutboundDelivery)
    if status is not None:
        stmt = stmt.where(col(OutboundDelivery.status) == status.value)
        count_stmt = count_stmt.where(col(OutboundDelivery.status) == status.value)
    if ticket_id is not None:
        stmt = stmt.where(col(OutboundDelivery.ticket_id) == ticket_id)
        count_stmt = count_stmt.where(col(OutboundDelivery.ticket_id) == ticket_id)
    rows = session.exec(
        stmt.order_by(col(OutboundDelivery.id).desc()).offset(offset).limit(limit)
    ).all()
    return OutboundDeliveriesPublic(
        data=[OutboundDeliveryPublic.model_validate(r, from_attributes=True) for r in rows],
        count=session.exec(count_stmt).one(),
    )


def retry(session: Session, *, delivery_id: int) -> OutboundDeliveryPublic:
    """Queue a failed delivery again, from attempt zero."""
    delivery = session.get(OutboundDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"No outbound delivery with id {delivery_id}.")
    if delivery.status != OutboundStatus.failed.value:
        raise InvalidInput(
            f"Delivery {delivery_id} is {delivery.status}; only failed deliveries are retried.",
            code="not_failed",
        )
    delivery.status = OutboundStatus.pending.value
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    session.add(delivery)
    session.commit()
    session.refresh(delivery)
    return OutboundDeliveryPublic.model_validate(delivery, from_attributes=True)
