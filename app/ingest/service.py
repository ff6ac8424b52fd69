"""Validate, normalise, deduplicate and store incoming tickets, in one transaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.core.body import RawBody
from app.core.config import Settings
from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, PayloadTooLarge
from app.core.limits import MAX_JSON_DEPTH, json_depth_over, optional_text, required_text
from app.ingest.models import RawDelivery, WebhookEvent
from app.ingest.pii import redact, redact_metadata
from app.ingest.schemas import IngestItemResult, TicketCreate
from app.ingest.sources import SourceRegistry
from app.tickets.models import AnalysisStatus, Ticket, TicketAnalysis

log = logging.getLogger("app.ingest")


@dataclass(frozen=True, slots=True)
class _Prepared:
    index: int
    item: TicketCreate
    channel: str
    body: str
    subject: str | None
    content_hash: str
    author_hash: str | None


def content_hash(subject: str | None, body: str) -> str:
    """sha256 of the analysed text: equal hashes mean nothing to re-analyse."""
    return hashlib.sha256(f"{subject or ''}\x1f{body}".encode()).hexdigest()


def author_hash(author: str | None, salt: str) -> str | None:
    """A salted HMAC of the author, so the same person groups without being stored."""
    if author is None or not author.strip():
        return None
    return hmac.new(salt.encode(), author.strip().lower().encode(), hashlib.sha256).hexdigest()


def prepare(
    items: Sequence[TicketCreate], *, settings: Settings, sources: SourceRegistry, salt: str
) -> list[_Prepared]:
    """Check every item against the limits before anything is stored; the first problem wins."""
    if not items:
        raise InvalidInput("The batch is empty; send at least one item.", code="empty_batch")
    if len(items) > settings.max_batch_items:
        raise PayloadTooLarge(
            f"The batch has {len(items)} items; the limit is {settings.max_batch_items}.",
            code="batch_too_large",
        )
    prepared = []
    for i, item in enumerate(items):
        where = f"items[{i}]" if len(items) > 1 else "item"
        channel = sources.channel_for(item.source)
        if channel is None:
            raise InvalidInput(
                f"{where}: unknown source {item.source!r}. Use one of: {', '.join(sources.names)}"
                " (or add it to EXTRA_SOURCES).",
                code="unknown_source",
            )
        if "\ufffd" in item.external_id or "\ufffd" in item.source:
            raise InvalidInput(
                f"{where}: external_id holds a lone UTF-16 surrogate or U+FFFD; send the id as "
                "valid Unicode (two different broken ids would otherwise become the same).",
                code="invalid_id",
            )
        body = required_text(item.body, what=f"{where}: body", limit=settings.max_body_chars)
        subject = optional_text(
            item.subject, what=f"{where}: subject", limit=settings.max_subject_chars
        )
        # Personal data never reaches the database, the embedding or the API.
        body = redact(body).text
        subject = redact(subject).text if subject else subject
        if item.metadata is not None:
            if json_depth_over(item.metadata, MAX_JSON_DEPTH):
                raise InvalidInput(
                    f"{where}: metadata nests objects or arrays more than {MAX_JSON_DEPTH} levels "
                    "deep; flatten it.",
                    code="metadata_too_deep",
                )
            size = len(json.dumps(item.metadata, default=str))
            if size > settings.max_metadata_bytes:
                raise PayloadTooLarge(
                    f"{where}: metadata is {size} bytes of JSON; the limit is "
                    f"{settings.max_metadata_bytes}.",
                    code="metadata_too_large",
                )
            # Personal data in metadata (customer_email, phone, …) is removed like the body's.
            item = item.model_copy(update={"metadata": redact_metadata(item.metadata)})
        prepared.append(
            _Prepared(
                index=i,
                item=item,
                channel=(item.channel or channel).value,
                body=body,
                subject=subject,
                content_hash=content_hash(subject, body),
                author_hash=author_hash(item.author, salt),
            )
        )
    return prepared


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request's items, stored together: its raw body, kind and (for webhooks) event."""

    prepared: Sequence[_Prepared]
    raw: RawBody
    kind: str
    event: tuple[str, str, str] | None = None


def store(
    session: Session,
    *,
    prepared: Sequence[_Prepared],
    raw: RawBody,
    kind: str,
    event: tuple[str, str, str] | None = None,
) -> list[IngestItemResult]:
    """Store the batch atomically; a concurrent insert of the same ticket is retried once.

    `event` (provider, event id, event name) makes a helpdesk delivery idempotent on its event
    id: the event is recorded in the same transaction, and a redelivery changes nothing."""
    return store_many(session, [Delivery(prepared=prepared, raw=raw, kind=kind, event=event)])[0]


def store_many(session: Session, deliveries: Sequence[Delivery]) -> list[list[IngestItemResult]]:
    """Store several deliveries in one transaction (one commit for all), each as `store` would
    alone, in order; a concurrent insert of the same ticket or event is retried once."""
    for attempt in (1, 2):
        try:
            return _store_once(session, deliveries)
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise
            # Another request inserted one of these tickets (or events) between our read and
            # our write; the second pass finds it and treats this delivery as a repeat/update.
            log.info("ingest retry after concurrent insert", extra={"stage": "ingest"})
    raise AssertionError("unreachable")


def _is_stale(ticket: Ticket, item: TicketCreate) -> bool:
    """True when the provider says this version is older than the one stored."""
    incoming = (item.metadata or {}).get("source_updated_at")
    stored = (ticket.meta or {}).get("source_updated_at")
    if not isinstance(incoming, str) or not isinstance(stored, str):
        return False
    try:
        return datetime.fromisoformat(incoming) < datetime.fromisoformat(stored)
    except ValueError:
        return False


def _existing_tickets(
    session: Session, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], Ticket]:
    """The stored tickets with these (source, external_id) keys."""
    found: dict[tuple[str, str], Ticket] = {}
    pair = tuple_(Ticket.source, Ticket.external_id)
    for start in range(0, len(keys), 500):
        rows = session.exec(select(Ticket).where(pair.in_(keys[start : start + 500]))).all()
        found.update({(t.source, t.external_id): t for t in rows})
    return found


def _seen_events(session: Session, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (provider, event id) pairs already recorded."""
    seen: set[tuple[str, str]] = set()
    pair = tuple_(WebhookEvent.provider, WebhookEvent.event_id)
    for start in range(0, len(keys), 500):
        found = session.execute(
            select(WebhookEvent.provider, WebhookEvent.event_id).where(
                pair.in_(keys[start : start + 500])
            )
        ).all()
        seen.update((provider, event_id) for provider, event_id in found)
    return seen


def _store_once(session: Session, deliveries: Sequence[Delivery]) -> list[list[IngestItemResult]]:
    begin_write(session)
    keys = list({(p.item.source, p.item.external_id) for d in deliveries for p in d.prepared})
    existing = _existing_tickets(session, keys)
    event_keys = list({(d.event[0], d.event[1]) for d in deliveries if d.event is not None})
    seen_events = _seen_events(session, event_keys) if event_keys else set()

    now = utcnow()
    # Decide everything in memory first, so the whole batch costs a few round trips.
    outcomes: list[list[tuple[_Prepared, Ticket, str, bool]]] = []
    needs_row: list[list[Ticket]] = []  # per delivery: tickets that point at its raw row
    new_tickets: list[Ticket] = []
    new_events: list[dict[str, Any]] = []
    requeued: list[int] = []
    for d in deliveries:
        repeat = False
        if d.event is not None:
            event_key = (d.event[0], d.event[1])
            repeat = event_key in seen_events
            if not repeat:
                seen_events.add(event_key)
                new_events.append(
                    {"provider": d.event[0], "event_id": d.event[1], "event": d.event[2][:128],
                     "received_at": now}
                )  # fmt: skip
        mine: list[tuple[_Prepared, Ticket, str, bool]] = []
        touched: list[Ticket] = []
        for p in d.prepared:
            key = (p.item.source, p.item.external_id)
            ticket = existing.get(key)
            if ticket is not None and (repeat or _is_stale(ticket, p.item)):
                # A redelivered event, or an older version arriving late: acknowledged only.
                mine.append((p, ticket, "unchanged", False))
                continue
            if ticket is None:
                ticket = Ticket(
                    source=p.item.source,
                    external_id=p.item.external_id,
                    channel=p.channel,
                    author_hash=p.author_hash,
                    subject=p.subject,
                    body=p.body,
                    content_hash=p.content_hash,
                    meta=p.item.metadata or {},
                    created_at=p.item.created_at or now,
                    received_at=now,
                    updated_at=now,
                    status=AnalysisStatus.pending,
                )
                existing[key] = ticket
                new_tickets.append(ticket)
                touched.append(ticket)
                mine.append((p, ticket, "created", True))
                continue
            text_changed = ticket.content_hash != p.content_hash
            changed = text_changed
            if text_changed:
                ticket.subject, ticket.body, ticket.content_hash = p.subject, p.body, p.content_hash
                ticket.revision += 1
                ticket.status = AnalysisStatus.pending
                ticket.attempts = 0
                ticket.last_error = None
                ticket.language = ticket.language_confidence = ticket.language_supported = None
                if ticket.id is not None:
                    requeued.append(ticket.id)
            if ticket.channel != p.channel:
                ticket.channel, changed = p.channel, True
            if p.author_hash is not None and ticket.author_hash != p.author_hash:
                ticket.author_hash, changed = p.author_hash, True
            if p.item.created_at is not None and ticket.created_at != p.item.created_at:
                ticket.created_at, changed = p.item.created_at, True
            if p.item.metadata is not None and ticket.meta != p.item.metadata:
                ticket.meta, changed = p.item.metadata, True
            if changed:
                ticket.updated_at = now
                touched.append(ticket)
            mine.append((p, ticket, "updated" if changed else "unchanged", text_changed))
        outcomes.append(mine)
        needs_row.append(touched)

    # One raw_delivery row per delivery that stored something, then the tickets pointing at it.
    # New rows go in as multi-row INSERTs (ids returned in order): a batch of deliveries costs a
    # few round trips, not a few per delivery. Changed tickets are ORM updates, flushed below.
    stored = [i for i in range(len(deliveries)) if needs_row[i]]
    raw_ids: dict[int, int] = {}
    if stored:
        raw_table = RawDelivery.__table__  # type: ignore[attr-defined]
        ids = session.execute(
            insert(raw_table).returning(raw_table.c.id, sort_by_parameter_order=True),
            [
                {
                    "kind": deliveries[i].kind,
                    "content_type": deliveries[i].raw.content_type,
                    "sha256": hashlib.sha256(deliveries[i].raw.data).hexdigest(),
                    "size_bytes": len(deliveries[i].raw.data),
                    "payload": None,
                    "received_at": now,
                }
                for i in stored
            ],
        ).scalars()
        raw_ids = dict(zip(stored, ids, strict=True))
    for i, touched in enumerate(needs_row):
        for ticket in touched:
            ticket.raw_delivery_id = raw_ids[i]
    if new_tickets:
        ticket_table = Ticket.__table__  # type: ignore[attr-defined]
        columns = [c.name for c in ticket_table.columns if c.name != "id"]
        ids = session.execute(
            insert(ticket_table).returning(ticket_table.c.id, sort_by_parameter_order=True),
            [{c: getattr(t, c) for c in columns} for t in new_tickets],
        ).scalars()
        for ticket, ticket_id in zip(new_tickets, ids, strict=True):
            ticket.id = ticket_id
    if new_events:
        session.execute(insert(WebhookEvent.__table__), new_events)  # type: ignore[attr-defined]
    if requeued:
        # The stored analysis described the old text; the worker writes a new one.
        session.exec(delete(TicketAnalysis).where(col(TicketAnalysis.ticket_id).in_(requeued)))
    session.flush()
    session.commit()
    results: list[list[IngestItemResult]] = []
    for mine in outcomes:
        out = []
        for p, ticket, result, queued in mine:
            assert ticket.id is not None
            out.append(
                IngestItemResult(
                    index=p.index,
                    id=ticket.id,
                    source=ticket.source,
                    external_id=ticket.external_id,
                    result=result,
                    queued=queued,
                )
            )
        results.append(out)
    return results
