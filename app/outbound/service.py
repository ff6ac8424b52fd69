"""Outbound webhook: analysed tickets POSTed to OUTBOUND_WEBHOOK_URL, signed, retried, recorded.

Rows are written in the transaction that stores the analysis (an outbox), so a crash never loses
one; a sender loop in each worker claims due rows (FOR UPDATE SKIP LOCKED on PostgreSQL), posts
them and records the outcome. Receivers verify

    X-IssueLens-Signature: sha256=<hex HMAC-SHA256(secret, X-IssueLens-Timestamp + "." + body)>
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from app.core.db import utcnow
from app.core.errors import InvalidInput, NotFound
from app.outbound.models import OutboundDelivery, OutboundStatus
from app.outbound.schemas import OutboundDeliveriesPublic, OutboundDeliveryPublic
from app.routing.table import RoutingTable
from app.tickets import service as tickets_service

log = logging.getLogger("app.outbound")

MAX_BACKOFF_S = 3600.0
USER_AGENT = "IssueLens-Webhook/0.1"


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """Where and how analysed tickets are sent."""

    url: str
    secret: str
    max_attempts: int = 8
    backoff_s: float = 2.0
    timeout_s: float = 5.0


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
    """Seconds before the next try: doubling from `base_s`, capped at an hour, +-20% jitter."""
    delay = min(base_s * 2 ** max(0, attempts - 1), MAX_BACKOFF_S)
    return delay * random.uniform(0.8, 1.2)


def _post(
    config: OutboundConfig, delivery: OutboundDelivery, body: bytes
) -> tuple[int | None, str | None]:
    stamp = str(int(time.time()))
    request = urllib.request.Request(
        config.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-IssueLens-Event": delivery.event,
            "X-IssueLens-Delivery": str(delivery.id),
            "X-IssueLens-Timestamp": stamp,
            "X-IssueLens-Signature": sign(config.secret, stamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:  # noqa: S310
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:2000]


def _claim_due(session: Session, *, limit: int) -> Sequence[OutboundDelivery]:
    stmt = (
        select(OutboundDelivery)
        .where(col(OutboundDelivery.status) == OutboundStatus.pending.value)
        .where(col(OutboundDelivery.next_attempt_at) <= utcnow())
        .order_by(col(OutboundDelivery.next_attempt_at), col(OutboundDelivery.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return session.exec(stmt).all()


def send_due(
    engine: Engine, *, config: OutboundConfig, routing: RoutingTable, limit: int = 20
) -> int:
    """Send up to `limit` due deliveries and record each outcome; returns how many were tried."""
    with Session(engine, expire_on_commit=False) as session:
        due = _claim_due(session, limit=limit)
        for delivery in due:
            try:
                ticket = tickets_service.get_ticket(
                    session, ticket_id=delivery.ticket_id, routing=routing
                )
            except NotFound:
                delivery.status = OutboundStatus.superseded.value
                delivery.last_error = "the ticket no longer exists"
                continue
            if ticket.revision != delivery.revision:
                # Its text changed and it will be analysed again; that analysis is sent instead.
                delivery.status = OutboundStatus.superseded.value
                continue
            payload = {
                "event": delivery.event,
                "delivery_id": delivery.id,
                "ticket": json.loads(ticket.model_dump_json()),
            }
            body = json.dumps(payload, separators=(",", ":")).encode()
            status, error = _post(config, delivery, body)
            delivery.attempts += 1
            delivery.last_status_code = status
            if status is not None and 200 <= status < 300:
                delivery.status = OutboundStatus.delivered.value
                delivery.delivered_at = utcnow()
                delivery.last_error = None
            elif delivery.attempts >= config.max_attempts:
                delivery.status = OutboundStatus.failed.value
                delivery.last_error = error or f"HTTP {status}"
                log.warning(
                    "outbound delivery failed for good",
                    extra={
                        "stage": "outbound",
                        "delivery": delivery.id,
                        "ticket": delivery.ticket_id,
                        "attempts": delivery.attempts,
                        "error": delivery.last_error,
                    },
                )
            else:
                delivery.last_error = error or f"HTTP {status}"
                wait = backoff(delivery.attempts, config.backoff_s)
                delivery.next_attempt_at = utcnow() + timedelta(seconds=wait)
            session.add(delivery)
        session.commit()
        return len(due)


class OutboundSender:
    """A loop beside the worker that sends due deliveries until stopped."""

    def __init__(
        self, *, engine: Engine, config: OutboundConfig, routing: RoutingTable, poll_s: float = 1.0
    ) -> None:
        self.engine, self.config, self.routing, self.poll_s = engine, config, routing, poll_s
        self._stop = threading.Event()

    def run(self) -> None:
        """Send what is due; sleep `poll_s` when nothing is."""
        log.info("outbound sender started", extra={"stage": "outbound", "url": self.config.url})
        while not self._stop.is_set():
            try:
                sent = send_due(self.engine, config=self.config, routing=self.routing)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop deliveries
                log.exception("outbound sender error", extra={"stage": "outbound"})
                sent = 0
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
