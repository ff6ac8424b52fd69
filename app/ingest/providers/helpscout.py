"""Help Scout: mailbox webhooks; the event name is in the X-HelpScout-Event header.

Signature: X-HelpScout-Signature = base64(HMAC-SHA1(secret, raw body)).
`convo.created` stores the conversation (its first customer thread) as the ticket;
`convo.customer.reply.created` stores the newest customer thread as
`<conversation id>/threads/<thread id>`. Agent replies, notes and other events are ignored.
"""

from __future__ import annotations

import hashlib
from typing import Any

from app.core.errors import InvalidInput
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    compact,
    hmac_digest,
    html_to_text,
    iso,
    obj,
    parse_time,
    pick,
    require_secret,
    same,
    text_id,
    unauthorized,
)
from app.ingest.schemas import TicketCreate

SIGNATURE = "X-HelpScout-Signature"
EVENT = "X-HelpScout-Event"


def verify(req: WebhookRequest) -> None:
    """Check the base64 HMAC-SHA1 of the raw body."""
    secret = require_secret(req, "helpscout")
    signature = req.header(SIGNATURE)
    if signature is None:
        raise unauthorized(f"Missing {SIGNATURE}.", code="missing_signature")
    if not same(hmac_digest(secret, req.body, "sha1"), signature, encoding="base64"):
        raise unauthorized(f"{SIGNATURE} does not match the body.")


def _customer_threads(convo: dict[str, Any]) -> list[dict[str, Any]]:
    threads = pick(convo, "_embedded", "threads")
    if not isinstance(threads, list):
        return []
    found = [t for t in threads if isinstance(t, dict) and t.get("type") == "customer"]
    return sorted(found, key=lambda t: (str(t.get("createdAt") or ""), str(t.get("id") or "")))


def _author(convo: dict[str, Any], thread: dict[str, Any] | None) -> str | None:
    for candidate in (
        pick(thread, "customer", "id"),
        pick(thread, "createdBy", "id"),
        pick(convo, "primaryCustomer", "id"),
        pick(convo, "customer", "id"),
        pick(convo, "customer", "email"),
    ):
        if text_id(candidate):
            return text_id(candidate)
    return None


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The customer's text from a conversation event."""
    event = req.header(EVENT)
    if event is None:
        raise InvalidInput(f"The {EVENT} header is missing.", code="invalid_payload")
    convo = obj(payload, "The body")
    event_id = hashlib.sha256(event.encode() + b"\n" + req.body).hexdigest()
    out = Normalised(event_id=event_id, event=event)
    if event not in ("convo.created", "convo.customer.reply.created"):
        out.ignored = f"{event} carries no new customer text"
        return out
    convo_id = text_id(convo.get("id"))
    if convo_id is None:
        raise InvalidInput("id is missing: not a Help Scout conversation.", code="invalid_payload")
    threads = _customer_threads(convo)
    subject = convo.get("subject") if isinstance(convo.get("subject"), str) else None
    meta = compact(
        number=convo.get("number"),
        mailbox=text_id(convo.get("mailboxId")),
        status=convo.get("status"),
        via=pick(convo, "source", "type"),
        source_updated_at=iso(convo.get("userUpdatedAt") or convo.get("updatedAt")),
    )
    if event == "convo.created":
        first = threads[0] if threads else None
        body = html_to_text(first.get("body")) if first else ""
        body = body or html_to_text(convo.get("preview"))
        if not body:
            out.ignored = "the conversation has no customer text"
            return out
        out.items.append(
            TicketCreate(
                source="helpscout",
                external_id=convo_id,
                subject=subject,
                body=body,
                author=_author(convo, first),
                created_at=parse_time(convo.get("createdAt")),
                metadata=meta or None,
            )
        )
        return out
    if not threads:
        out.ignored = "no customer thread in the conversation"
        return out
    last = threads[-1]
    body = html_to_text(last.get("body"))
    if not body:
        out.ignored = "the customer's reply has no text"
        return out
    out.items.append(
        TicketCreate(
            source="helpscout",
            external_id=f"{convo_id}/threads/{text_id(last.get('id')) or event_id[:16]}",
            subject=subject,
            body=body,
            author=_author(convo, last),
            created_at=parse_time(last.get("createdAt")),
            metadata={"thread": convo_id, "kind": "reply"},
        )
    )
    return out


PROVIDER = Provider(
    name="helpscout",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: base64 HMAC-SHA1 of the raw body",
)
