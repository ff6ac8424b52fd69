"""Zendesk: ticket event webhooks (zen:event-type:ticket.*) and trigger webhooks.

Signature: X-Zendesk-Webhook-Signature = base64(HMAC-SHA256(secret, timestamp + raw body)),
timestamp in X-Zendesk-Webhook-Signature-Timestamp; stale timestamps are refused.

Event webhooks carry the ticket in `detail` (subject, description, requester, times): every ticket
event upserts that ticket, and `ticket.comment_added` with a public comment by a non-staff author
also stores the comment as the customer's own message (`<ticket id>/comments/<comment id>`).
Trigger webhooks send the JSON body the trigger defines; the README gives the template:
{"ticket": {"id", "subject", "description", "requester_id", "created_at", "updated_at", ...}}.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInput
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    check_fresh,
    compact,
    event_key,
    hmac_digest,
    iso,
    obj,
    parse_time,
    pick,
    refuse_duplicate_keys,
    require_secret,
    same,
    text_id,
    unauthorized,
)
from app.ingest.schemas import TicketCreate

SIGNATURE = "X-Zendesk-Webhook-Signature"
TIMESTAMP = "X-Zendesk-Webhook-Signature-Timestamp"


def verify(req: WebhookRequest) -> None:
    """Check the HMAC over timestamp + body and that the timestamp is recent."""
    secret = require_secret(req, "zendesk")
    signature, stamp = req.header(SIGNATURE), req.header(TIMESTAMP)
    if signature is None or stamp is None:
        raise unauthorized(f"Missing {SIGNATURE} or {TIMESTAMP}.", code="missing_signature")
    if not same(
        hmac_digest(secret, stamp.encode() + req.body, "sha256"), signature, encoding="base64"
    ):
        raise unauthorized(f"{SIGNATURE} does not match the body and timestamp.")
    when = parse_time(stamp)
    if when is None:
        raise unauthorized(f"{TIMESTAMP} is not an ISO 8601 time.", code="stale_signature")
    check_fresh(req, when, TIMESTAMP)


def _ticket(detail: dict[str, Any], *, where: str) -> TicketCreate | None:
    ticket_id = text_id(detail.get("id"))
    if ticket_id is None:
        raise InvalidInput(f"{where}.id is missing: not a Zendesk ticket.", code="invalid_payload")
    description = detail.get("description")
    if not isinstance(description, str) or not description.strip():
        return None
    meta = compact(
        status=detail.get("status"),
        priority=detail.get("priority"),
        type=detail.get("type"),
        tags=detail.get("tags") or None,
        via=pick(detail, "via", "channel") or detail.get("via"),
        source_updated_at=iso(detail.get("updated_at")),
    )
    subject = detail.get("subject")
    return TicketCreate(
        source="zendesk",
        external_id=ticket_id,
        subject=subject if isinstance(subject, str) else None,
        body=description,
        author=text_id(detail.get("requester_id")) or text_id(pick(detail, "requester", "id")),
        created_at=parse_time(detail.get("created_at")),
        metadata=meta or None,
    )


def _customer_comment(
    data: dict[str, Any], detail: dict[str, Any], ticket: TicketCreate | None, event_id: str
) -> TicketCreate | None:
    """A public comment by a non-staff author, as the customer's own message."""
    comment = pick(data, "event", "comment")
    if not isinstance(comment, dict):
        return None
    raw_author = comment.get("author")
    author: dict[str, Any] = raw_author if isinstance(raw_author, dict) else {}
    body = comment.get("body")
    if comment.get("is_public") is False or author.get("is_staff"):
        return None
    if not isinstance(body, str) or not body.strip():
        return None
    if ticket is not None and body.strip() == ticket.body.strip():
        return None  # the opening comment is the description itself
    ticket_id = text_id(detail.get("id"))
    subject = detail.get("subject")
    return TicketCreate(
        source="zendesk",
        external_id=f"{ticket_id}/comments/{text_id(comment.get('id')) or event_id}",
        subject=subject if isinstance(subject, str) else None,
        body=body,
        author=text_id(author.get("id")),
        created_at=parse_time(data.get("time")),
        metadata={"thread": ticket_id, "kind": "comment"},
    )


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """Tickets from an event webhook (`type` zen:event-type:ticket.*) or a trigger body."""
    refuse_duplicate_keys(req.body)
    data = obj(payload, "The body")
    event_type = data.get("type")
    if isinstance(event_type, str) and event_type.startswith("zen:event-type:"):
        event_id = event_key(text_id(data.get("id")), req.body)
        event = event_type.removeprefix("zen:event-type:")
        out = Normalised(event_id=event_id, event=event)
        if not event.startswith("ticket."):
            out.ignored = f"{event} events carry no ticket text"
            return out
        detail = obj(data.get("detail"), "detail")
        ticket = _ticket(detail, where="detail")
        if ticket is not None:
            out.items.append(ticket)
        comment = _customer_comment(data, detail, ticket, event_id)
        if event == "ticket.comment_added" and comment is not None:
            out.items.append(comment)
        if not out.items:
            out.ignored = f"{event}: no customer text (agent comment or empty description)"
        return out
    if isinstance(data.get("ticket"), dict):
        # A trigger's body: the template in the README.
        event_id = event_key(text_id(data.get("event_id")), req.body)
        out = Normalised(event_id=event_id, event=str(data.get("event") or "trigger"))
        ticket = _ticket(data["ticket"], where="ticket")
        if ticket is None:
            out.ignored = "the ticket has no description"
        else:
            out.items.append(ticket)
        return out
    raise InvalidInput(
        "Not a Zendesk ticket payload: expected an event webhook ('type': "
        "'zen:event-type:ticket.*' with 'detail') or a trigger body with a 'ticket' object.",
        code="invalid_payload",
    )


PROVIDER = Provider(
    name="zendesk",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: base64 HMAC-SHA256 of {TIMESTAMP} + raw body",
)
