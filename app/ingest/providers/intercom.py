"""Intercom: conversation webhooks (notification_event).

Signature: X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, raw body)>.
`conversation.user.created` stores the conversation's opening message as the ticket (its id);
`conversation.user.replied` stores the customer's new reply as `<conversation id>/parts/<part id>`.
Admin, bot and other topics are acknowledged and ignored.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInput
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    compact,
    event_key,
    hmac_digest,
    html_to_text,
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

SIGNATURE = "X-Hub-Signature"
CUSTOMER_TYPES = frozenset({"user", "lead", "contact"})


def verify(req: WebhookRequest) -> None:
    """Check `sha1=` + hex HMAC-SHA1 of the raw body."""
    secret = require_secret(req, "intercom")
    signature = req.header(SIGNATURE)
    if signature is None or not signature.startswith("sha1="):
        raise unauthorized(f"Missing {SIGNATURE} (sha1=...).", code="missing_signature")
    given = signature.removeprefix("sha1=")
    if not same(hmac_digest(secret, req.body, "sha1"), given, encoding="hex"):
        raise unauthorized(f"{SIGNATURE} does not match the body.")


def _author(part: Any) -> tuple[str | None, str | None]:
    author = pick(part, "author")
    if not isinstance(author, dict):
        return None, None
    return text_id(author.get("type")), text_id(author.get("id")) or text_id(author.get("email"))


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The customer's text from a conversation notification."""
    refuse_duplicate_keys(req.body)
    data = obj(payload, "The body")
    topic = data.get("topic")
    if not isinstance(topic, str):
        raise InvalidInput(
            "Not an Intercom notification: 'topic' is missing.", code="invalid_payload"
        )
    event_id = event_key(text_id(data.get("id")), req.body)
    out = Normalised(event_id=event_id, event=topic)
    if topic not in ("conversation.user.created", "conversation.user.replied"):
        out.ignored = f"{topic} carries no new customer text"
        return out
    item = obj(pick(data, "data", "item"), "data.item")
    conv_id = text_id(item.get("id"))
    if conv_id is None:
        raise InvalidInput("data.item.id is missing: not a conversation.", code="invalid_payload")
    meta = compact(
        state=item.get("state"),
        source_updated_at=iso(item.get("updated_at")),
        delivered_as=pick(item, "source", "delivered_as"),
    )
    if topic == "conversation.user.created":
        source = obj(item.get("source"), "data.item.source")
        body = html_to_text(source.get("body"))
        if not body:
            out.ignored = "the conversation's first message has no text"
            return out
        _, author = _author(source)
        out.items.append(
            TicketCreate(
                source="intercom",
                external_id=conv_id,
                subject=html_to_text(source.get("subject")) or None,
                body=body,
                author=author,
                created_at=parse_time(item.get("created_at")),
                metadata=meta or None,
            )
        )
        return out
    parts = pick(item, "conversation_parts", "conversation_parts")
    for part in reversed(parts if isinstance(parts, list) else []):
        kind, author = _author(part)
        body = html_to_text(pick(part, "body"))
        if kind in CUSTOMER_TYPES and body and pick(part, "part_type") in ("comment", None):
            out.items.append(
                TicketCreate(
                    source="intercom",
                    external_id=f"{conv_id}/parts/{text_id(part.get('id')) or event_id}",
                    body=body,
                    author=author,
                    created_at=parse_time(part.get("created_at")),
                    metadata={"thread": conv_id, "kind": "reply"},
                )
            )
            return out
    out.ignored = "no customer comment among the conversation parts"
    return out


PROVIDER = Provider(
    name="intercom",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: sha1= hex HMAC-SHA1 of the raw body",
)
