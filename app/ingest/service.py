"""Validate, normalise, deduplicate and store incoming tickets, in one transaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.core.body import RawBody
from app.core.config import Settings
from app.core.db import begin_write, utcnow
from app.core.errors import InvalidInput, PayloadTooLarge
from app.core.limits import optional_text, required_text
from app.ingest.models import RawDelivery
from app.ingest.pii import redact
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
        body = required_text(item.body, what=f"{where}: body", limit=settings.max_body_chars)
        subject = optional_text(
            item.subject, what=f"{where}: subject", limit=settings.max_subject_chars
        )
        # Personal data never reaches the database, the embedding or the API.
        body = redact(body).text
        subject = redact(subject).text if subject else subject
        if item.metadata is not None:
            size = len(json.dumps(item.metadata, default=str))
            if size > settings.max_metadata_bytes:
                raise PayloadTooLarge(
                    f"{where}: metadata is {size} bytes of JSON; the limit is "
                    f"{settings.max_metadata_bytes}.",
                    code="metadata_too_large",
                )
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


def store(
    session: Session, *, prepared: Sequence[_Prepared], raw: RawBody, kind: str
) -> list[IngestItemResult]:
    """Store the batch atomically; a concurrent insert of the same ticket is retried once."""
    for attempt in (1, 2):
        try:
            return _store_once(session, prepared=prepared, raw=raw, kind=kind)
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise
            # Another request inserted one of these tickets between our read and our write;
            # the second pass finds it and treats this delivery as a repeat or an update.
            log.info("ingest retry after concurrent insert", extra={"stage": "ingest"})
    raise AssertionError("unreachable")


def _store_once(
    session: Session, *, prepared: Sequence[_Prepared], raw: RawBody, kind: str
) -> list[IngestItemResult]:
    begin_write(session)
    keys = list({(p.item.source, p.item.external_id) for p in prepared})
    existing: dict[tuple[str, str], Ticket] = {}
    for chunk_start in range(0, len(keys), 500):
        chunk = keys[chunk_start : chunk_start + 500]
        rows = session.exec(
            select(Ticket).where(tuple_(Ticket.source, Ticket.external_id).in_(chunk))
        ).all()
        existing.update({(t.source, t.external_id): t for t in rows})

    now = utcnow()
    delivery: RawDelivery | None = None

    def delivery_id() -> int | None:
        nonlocal delivery
        if delivery is None:
            delivery = RawDelivery(
                kind=kind,
                content_type=raw.content_type,
                sha256=hashlib.sha256(raw.data).hexdigest(),
                size_bytes=len(raw.data),
                received_at=now,
            )
            session.add(delivery)
            session.flush()
        return delivery.id

    outcomes: list[tuple[_Prepared, Ticket, str, bool]] = []
    requeued: list[int] = []
    for p in prepared:
        key = (p.item.source, p.item.external_id)
        ticket = existing.get(key)
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
                raw_delivery_id=delivery_id(),
            )
            session.add(ticket)
            existing[key] = ticket
            outcomes.append((p, ticket, "created", True))
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
            ticket.raw_delivery_id = delivery_id()
            session.add(ticket)
        outcomes.append((p, ticket, "updated" if changed else "unchanged", text_changed))

    if requeued:
        # The stored analysis described the old text; the worker writes a new one.
        session.exec(delete(TicketAnalysis).where(col(TicketAnalysis.ticket_id).in_(requeued)))
    session.flush()
    session.commit()
    results = []
    for p, ticket, result, queued in outcomes:
        assert ticket.id is not None
        results.append(
            IngestItemResult(
                index=p.index,
                id=ticket.id,
                source=ticket.source,
                external_id=ticket.external_id,
                result=result,
                queued=queued,
            )
        )
    return results
