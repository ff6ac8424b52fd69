"""Freshdesk: automation-rule webhooks with the JSON template from the README.

Freshdesk signs nothing, so a shared secret authenticates the delivery: the rule sends it in the
X-Webhook-Secret header, or as the password of HTTP basic auth (any user name).
The body is {"freshdesk_webhook": {"ticket_id", "ticket_subject", "ticket_description", ...}}:
the ticket is upserted from it; when the rule sets "event": "requester_reply", the ticket's
latest public comment is stored as the customer's message `<ticket id>/comments/<sha256[:16]>`.
Freshdesk sends no event id: the sha256 of the body is the event id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

from app.core.errors import InvalidInput
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    compact,
    html_to_text,
    obj,
    parse_time,
    require_secret,
    text_id,
    unauthorized,
)
from app.ingest.schemas import TicketCreate

HEADER = "X-Webhook-Secret"


def verify(req: WebhookRequest) -> None:
    """Check the shared secret in X-Webhook-Secret or in HTTP basic auth's password."""
    secret = require_secret(req, "freshdesk")
    given = req.header(HEADER)
    auth = req.header("Authorization")
    if given is None and auth and auth.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("The basic auth header is not valid base64.") from None
        given = decoded.partition(":")[2]
    if given is None:
        raise unauthorized(
            f"Send the shared secret in {HEADER} or as the basic auth password.",
            code="missing_signature",
        )
    if not hmac.compare_digest(given.encode(), secret):
        raise unauthorized("The shared secret does not match FRESHDESK_WEBHOOK_SECRET.")


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The ticket (and the requester's reply) from the rule's JSON."""
    data = obj(payload, "The body")
    hook = obj(data.get("freshdesk_webhook", data), "freshdesk_webhook")
    ticket_id = text_id(hook.get("ticket_id"))
    if ticket_id is None:
        raise InvalidInput(
            "freshdesk_webhook.ticket_id is missing: use the template in the README.",
            code="invalid_payload",
        )
    event = str(hook.get("event") or hook.get("triggered_event") or "ticket")
    out = Normalised(event_id=hashlib.sha256(req.body).hexdigest(), event=event)
    subject = html_to_text(hook.get("ticket_subject")) or None
    author = text_id(hook.get("ticket_requester_email")) or text_id(hook.get("ticket_requester_id"))
    description = html_to_text(hook.get("ticket_description"))
    meta = compact(
        status=hook.get("ticket_status"),
        priority=hook.get("ticket_priority"),
        via=hook.get("ticket_source"),
        tags=hook.get("ticket_tags") or None,
    )
    if description:
        out.items.append(
            TicketCreate(
                source="freshdesk",
                external_id=ticket_id,
                subject=subject,
                body=description,
                author=author,
                created_at=parse_time(hook.get("ticket_created_at")),
                metadata=meta or None,
            )
        )
    comment = html_to_text(hook.get("ticket_latest_public_comment"))
    if event == "requester_reply" and comment:
        digest = hashlib.sha256(comment.encode()).hexdigest()[:16]
        out.items.append(
            TicketCreate(
                source="freshdesk",
                external_id=f"{ticket_id}/comments/{digest}",
                subject=subject,
                body=comment,
                author=author,
                metadata={"thread": ticket_id, "kind": "comment"},
            )
        )
    if not out.items:
        out.ignored = "the ticket has no description and no requester reply"
    return out


PROVIDER = Provider(
    name="freshdesk",
    verify=verify,
    normalise=normalise,
    signature_help=f"{HEADER}: the shared secret (or basic auth with it as the password)",
)
