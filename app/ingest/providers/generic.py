"""Generic JSON: any system that can sign its body.

Signature: X-Signature = hex HMAC-SHA256(secret, raw body) (an optional "sha256=" prefix is
accepted). The body is one ticket object as POST /v1/tickets takes it (source defaults to
"generic"), or {"event_id": "...", "tickets": [ ... ]}; without event_id, the body's sha256.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.core.errors import InvalidInput, validation_details
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    event_key,
    hmac_digest,
    obj,
    refuse_duplicate_keys,
    require_secret,
    same,
    text_id,
    unauthorized,
)
from app.ingest.schemas import TicketCreate

SIGNATURE = "X-Signature"


def verify(req: WebhookRequest) -> None:
    """Check the hex HMAC-SHA256 of the raw body."""
    secret = require_secret(req, "generic")
    signature = req.header(SIGNATURE)
    if signature is None:
        raise unauthorized(f"Missing {SIGNATURE}.", code="missing_signature")
    given = signature.removeprefix("sha256=")
    if not same(hmac_digest(secret, req.body, "sha256"), given, encoding="hex"):
        raise unauthorized(f"{SIGNATURE} does not match the body.")


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """One ticket, or a list under 'tickets'."""
    refuse_duplicate_keys(req.body)
    data = obj(payload, "The body")
    event_id = event_key(text_id(data.get("event_id")), req.body)
    if "tickets" in data:
        raw_items = data["tickets"]
        if not isinstance(raw_items, list) or not raw_items:
            raise InvalidInput("tickets must be a non-empty list.", code="invalid_payload")
        where = "tickets"
    else:
        raw_items = [{k: v for k, v in data.items() if k != "event_id"}]
        where = "body"
    items = []
    for i, raw in enumerate(raw_items):
        item = obj(raw, f"{where}[{i}]")
        try:
            items.append(TicketCreate.model_validate({"source": "generic", **item}))
        except ValidationError as exc:
            details = validation_details(exc.errors())
            first = details[0]
            raise InvalidInput(
                f"{where}[{i}].{first['field']}: {first['message']}",
                code="validation_error",
                details=details,
            ) from None
    return Normalised(event_id=event_id, event=str(data.get("event") or "ticket"), items=items)


PROVIDER = Provider(
    name="generic",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: hex HMAC-SHA256 of the raw body",
)
