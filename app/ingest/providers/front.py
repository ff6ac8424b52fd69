"""Front: rule and application webhooks (event objects).

Signature: X-Front-Signature = base64(HMAC-SHA256(secret, timestamp + ":" + raw body)), the
timestamp in X-Front-Request-Timestamp (milliseconds); stale timestamps are refused.
`inbound` events store the received message as `<conversation id>/messages/<message id>`
(the conversation's subject kept); outbound replies, comments, tags and the rest are ignored.
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
    html_to_text,
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

SIGNATURE = "X-Front-Signature"
TIMESTAMP = "X-Front-Request-Timestamp"
INBOUND = frozenset({"inbound", "message"})


def verify(req: WebhookRequest) -> None:
    """Check the HMAC over `timestamp:body` and that the timestamp is recent."""
    secret = require_secret(req, "front")
    signature, stamp = req.header(SIGNATURE), req.header(TIMESTAMP)
    if signature is None or stamp is None:
        raise unauthorized(f"Missing {SIGNATURE} or {TIMESTAMP}.", code="missing_signature")
    signed = stamp.encode() + b":" + req.body
    if not same(hmac_digest(secret, signed, "sha256"), signature, encoding="base64"):
        raise unauthorized(f"{SIGNATURE} does not match the body and timestamp.")
    when = parse_time(stamp)
    if when is None:
        raise unauthorized(f"{TIMESTAMP} is not a Unix time.", code="stale_signature")
    check_fresh(req, when, TIMESTAMP)


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The customer's message from an inbound event."""
    refuse_duplicate_keys(req.body)
    data = obj(payload, "The body")
    event = data.get("type")
    event_id = text_id(data.get("id"))
    if not isinstance(event, str) or event_id is None:
        raise InvalidInput(
            "Not a Front event: 'type' and 'id' are required.", code="invalid_payload"
        )
    out = Normalised(event_id=event_key(event_id, req.body), event=event)
    if event not in INBOUND:
        out.ignored = f"{event} events carry no new customer text"
        return out
    conversation = obj(data.get("conversation"), "conversation")
    message = obj(pick(data, "target", "data"), "target.data")
    conv_id, msg_id = text_id(conversation.get("id")), text_id(message.get("id"))
    if conv_id is None or msg_id is None:
        raise InvalidInput(
            "conversation.id and target.data.id are required.", code="invalid_payload"
        )
    if message.get("is_inbound") is False:
        out.ignored = "the message was sent by a teammate"
        return out
    text = message.get("text")
    body = (
        text.strip()
        if isinstance(text, str) and text.strip()
        else html_to_text(message.get("body"))
    )
    if not body:
        out.ignored = "the message has no text"
        return out
    raw_recipients = message.get("recipients")
    recipients: list[Any] = raw_recipients if isinstance(raw_recipients, list) else []
    sender = next(
        (r.get("handle") for r in recipients if isinstance(r, dict) and r.get("role") == "from"),
        None,
    )
    subject = conversation.get("subject")
    out.items.append(
        TicketCreate(
            source="front",
            external_id=f"{conv_id}/messages/{msg_id}",
            subject=subject if isinstance(subject, str) and subject.strip() else None,
            body=body,
            author=text_id(sender) or text_id(pick(message, "author", "id")),
            created_at=parse_time(message.get("created_at") or data.get("emitted_at")),
            metadata=compact(
                thread=conv_id,
                kind="message",
                via=message.get("type"),
                status=conversation.get("status"),
            ),
        )
    )
    return out


PROVIDER = Provider(
    name="front",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: base64 HMAC-SHA256 of {TIMESTAMP} + ':' + raw body",
)
