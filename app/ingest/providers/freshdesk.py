"""Freshdesk: automation-rule webhooks with the JSON template from the README.

Freshdesk signs nothing: an automation rule's webhook can only send fixed credentials (HTTP
basic auth or custom headers) and a body built from placeholders, with no signature, no
timestamp and no event id. So a shared secret authenticates the sender: the rule sends it in the
X-Webhook-Secret header, or as the password of HTTP basic auth (any user name). The secret is the
same on every delivery, so it cannot be bound to a time (a captured request reveals it whole),
and it authenticates the sender, not the body.

The body is {"freshdesk_webhook": {"ticket_id", "ticket_subject", "ticket_description", ...}}.

Two modes:

- Shared secret only (FRESHDESK_DOMAIN/FRESHDESK_API_KEY empty): the ticket is upserted from the
  body; when the rule sets "event": "requester_reply", the ticket's latest public comment is
  stored as the customer's message `<ticket id>/comments/<sha256[:16]>`.
- Verified (both set): the body only names the ticket (and the event). After the secret is
  checked, `confirm` reads the ticket from Freshdesk's API (GET /api/v2/tickets/{id}, plus its
  conversations for requester_reply) and the ticket is stored from what the API says: whatever
  else the body claims is never stored. An unknown ticket is a 422 and nothing is stored; an API
  that fails, refuses the key or does not answer within FRESHDESK_API_TIMEOUT_S is a 503 (with
  Retry-After) and nothing is stored, so the sender retries (Freshdesk does, then e-mails the
  account's admins), and every failure is logged with the ticket id.

Freshdesk sends no event id: the sha256 of the body is the event id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from app.core.body import RawBody, clean_json, parse_json
from app.core.errors import InvalidInput, NotReady
from app.ingest.providers.base import (
    Normalised,
    Provider,
    WebhookRequest,
    compact,
    event_key,
    html_to_text,
    iso,
    obj,
    parse_time,
    pick,
    refuse_duplicate_keys,
    require_secret,
    text_id,
    unauthorized,
)
from app.ingest.schemas import TicketCreate

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger("app.ingest")

HEADER = "X-Webhook-Secret"
REPLY = "requester_reply"
VERIFIED = "freshdesk_api"
# Freshdesk's API codes (https://developers.freshdesk.com/api/#tickets), as the placeholders
# render them in the shared-secret mode.
STATUS = {2: "Open", 3: "Pending", 4: "Resolved", 5: "Closed"}
PRIORITY = {1: "Low", 2: "Medium", 3: "High", 4: "Urgent"}
SOURCE = {
    1: "Email",
    2: "Portal",
    3: "Phone",
    7: "Chat",
    9: "Feedback Widget",
    10: "Outbound Email",
}
# What one delivery may cost: the API's answers are read up to this size, and the conversations
# of a requester reply up to this many pages of 100 (the newest customer message is wanted).
MAX_API_BYTES = 16_000_000
PER_PAGE = 100
MAX_PAGES = 10


def _same_secret(given: str, secret: bytes) -> bool:
    """Constant-time comparison that leaks neither the content nor the length of the secret."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(secret).digest()
    )


def verify(req: WebhookRequest) -> None:
    """Check the shared secret in X-Webhook-Secret or in HTTP basic auth's password."""
    secret = require_secret(req, "freshdesk")
    given = req.header(HEADER)
    auth = req.header("Authorization")  # read even when unused: sent twice is refused
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
    if not _same_secret(given, secret):
        raise unauthorized("The shared secret does not match FRESHDESK_WEBHOOK_SECRET.")


def _hook(payload: Any) -> dict[str, Any]:
    data = obj(payload, "The body")
    return obj(data.get("freshdesk_webhook", data), "freshdesk_webhook")


def _ticket_id(hook: dict[str, Any]) -> str:
    ticket_id = text_id(hook.get("ticket_id"))
    if ticket_id is None:
        raise InvalidInput(
            "freshdesk_webhook.ticket_id is missing: use the template in the README.",
            code="invalid_payload",
        )
    return ticket_id


def _event(hook: dict[str, Any]) -> str:
    return str(hook.get("event") or hook.get("triggered_event") or "ticket")


def api_base(domain: str) -> str:
    """Freshdesk's API root for FRESHDESK_DOMAIN (subdomain, full host name or base URL)."""
    domain = domain.strip().rstrip("/")
    if "://" in domain:
        return f"{domain}/api/v2"
    host = domain if domain.lower().endswith(".freshdesk.com") else f"{domain}.freshdesk.com"
    return f"https://{host}/api/v2"


class _ApiFailure(Exception):
    """Freshdesk's API did not give a usable answer."""

    def __init__(self, reason: str, retry_after: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


async def _get(client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> Any | None:
    """The JSON the API answers for `path` (None: 404), read up to MAX_API_BYTES."""
    async with client.stream("GET", path, params=params) as resp:
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            retry = resp.headers.get("retry-after")
            hint = {
                401: ": FRESHDESK_API_KEY was refused",
                403: ": the API key's agent may not read this ticket",
                429: ": the account's API rate limit is spent",
            }.get(resp.status_code, "")
            raise _ApiFailure(f"Freshdesk's API answered {resp.status_code}{hint}", retry)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > MAX_API_BYTES:
                raise _ApiFailure(f"Freshdesk's API answer is over {MAX_API_BYTES} bytes")
            chunks.append(chunk)
    try:
        return clean_json(json.loads(b"".join(chunks)))
    except (ValueError, RecursionError):
        raise _ApiFailure("Freshdesk's API answered something that is not JSON") from None


async def _fetch(settings: Settings, ticket_id: str, *, replies: bool) -> dict[str, Any]:
    """The ticket (with its requester) and, for a reply, its conversations, from the API."""
    timeout = settings.freshdesk_api_timeout_s
    async with httpx.AsyncClient(
        base_url=api_base(settings.freshdesk_domain),
        auth=httpx.BasicAuth(settings.freshdesk_api_key.strip(), "X"),
        headers={"Accept": "application/json"},
        timeout=timeout + 1,  # the deadline below governs
        follow_redirects=False,
    ) as client:
        # One deadline for every call of this delivery, not one per call.
        with anyio.fail_after(timeout):
            ticket = await _get(client, f"/tickets/{ticket_id}", {"include": "requester"})
            if ticket is None:
                return {}
            if not isinstance(ticket, dict):
                raise _ApiFailure("Freshdesk's API answered a ticket that is not an object")
            conversations: list[Any] = []
            for page in range(1, MAX_PAGES + 1):
                if not replies:
                    break
                batch = await _get(
                    client,
                    f"/tickets/{ticket_id}/conversations",
                    {"per_page": PER_PAGE, "page": page},
                )
                if not isinstance(batch, list):
                    break
                conversations.extend(batch)
                if len(batch) < PER_PAGE:
                    break
    return {"ticket": ticket, "conversations": conversations}


async def confirm(req: WebhookRequest, settings: Settings) -> WebhookRequest:
    """In verified mode, the delivery's ticket as Freshdesk's API has it (in `req.fetched`).

    Awaited on the event loop without blocking it: only this delivery waits, at most
    FRESHDESK_API_TIMEOUT_S. Unknown ticket: 422. No usable answer: 503, nothing stored."""
    if not (settings.freshdesk_domain.strip() and settings.freshdesk_api_key.strip()):
        return req
    content_type = next(iter(req.headers.get("content-type", ())), None)
    payload = parse_json(RawBody(data=req.body, content_type=content_type))
    refuse_duplicate_keys(req.body)  # the id asked about must be the one normalise reads
    hook = _hook(payload)
    ticket_id = _ticket_id(hook)
    if not (ticket_id.isascii() and ticket_id.isdigit() and len(ticket_id) <= 20):
        raise InvalidInput(
            f"freshdesk_webhook.ticket_id {ticket_id[:40]!r} is not a Freshdesk ticket number; "
            "send {{ticket.id}} as the README's template does.",
            code="invalid_payload",
        )
    fetched: dict[str, Any] = {}
    retry_after: str | None = None
    reason: str | None = None
    try:
        fetched = await _fetch(settings, ticket_id, replies=_event(hook) == REPLY)
    except _ApiFailure as exc:
        reason, retry_after = exc.reason, exc.retry_after
    except TimeoutError:
        reason = f"Freshdesk's API did not answer within {settings.freshdesk_api_timeout_s:g} s"
    except httpx.HTTPError as exc:
        reason = f"Freshdesk's API could not be reached ({type(exc).__name__})"
    if reason is not None:
        log.warning(
            "freshdesk ticket not verified: nothing stored, the sender is told to retry",
            extra={"stage": "ingest", "ticket_id": ticket_id, "reason": reason},
        )
        error = NotReady(
            f"Ticket {ticket_id} could not be confirmed with Freshdesk ({reason}); nothing was "
            "stored. Retry the delivery later.",
            code="freshdesk_unverified",
        )
        retry = retry_after.strip() if retry_after else ""
        error.headers = {"Retry-After": retry if retry.isascii() and retry.isdigit() else "60"}
        raise error from None
    if not fetched:
        log.warning(
            "freshdesk ticket unknown to the API: nothing stored",
            extra={"stage": "ingest", "ticket_id": ticket_id},
        )
        raise InvalidInput(
            f"Freshdesk has no ticket {ticket_id} (or the API key's agent cannot see it); "
            "nothing was stored.",
            code="freshdesk_ticket_not_found",
        )
    return replace(req, fetched=fetched)


def _named(names: dict[int, str], code: Any) -> Any:
    """The name Freshdesk's placeholders give an API code (the code itself when unknown)."""
    return names.get(code, code) if isinstance(code, int) else code


def _verified(out: Normalised, ticket_id: str, fetched: dict[str, Any]) -> Normalised:
    """The ticket, and for a requester reply its newest customer message, from the API."""
    ticket = fetched["ticket"]
    if ticket.get("spam") or ticket.get("deleted"):
        out.ignored = "Freshdesk marks the ticket as spam or deleted"
        return out
    requester_id = text_id(ticket.get("requester_id"))
    author = text_id(pick(ticket, "requester", "email")) or requester_id
    raw_subject = ticket.get("subject")
    subject = (raw_subject.strip() or None) if isinstance(raw_subject, str) else None
    description = html_to_text(ticket.get("description")) or html_to_text(
        ticket.get("description_text")
    )
    tags = ticket.get("tags")
    if description:
        out.items.append(
            TicketCreate(
                source="freshdesk",
                external_id=ticket_id,
                subject=subject,
                body=description,
                author=author,
                created_at=parse_time(ticket.get("created_at")),
                metadata=compact(
                    status=_named(STATUS, ticket.get("status")),
                    priority=_named(PRIORITY, ticket.get("priority")),
                    via=_named(SOURCE, ticket.get("source")),
                    tags=tags if isinstance(tags, list) and tags else None,
                    source_updated_at=iso(ticket.get("updated_at")),
                    verified=VERIFIED,
                ),
            )
        )
    if out.event == REPLY:
        customer = [
            c
            for c in fetched.get("conversations") or []
            if isinstance(c, dict)
            and c.get("incoming") is True
            and c.get("private") is not True
            and text_id(c.get("id"))
        ]
        customer.sort(key=lambda c: (str(c.get("created_at") or ""), str(c.get("id"))))
        if customer:
            last = customer[-1]
            body = html_to_text(last.get("body")) or html_to_text(last.get("body_text"))
            user = text_id(last.get("user_id"))
            if body:
                out.items.append(
                    TicketCreate(
                        source="freshdesk",
                        external_id=f"{ticket_id}/comments/{text_id(last.get('id'))}",
                        subject=subject,
                        body=body,
                        author=author if user is None or user == requester_id else user,
                        created_at=parse_time(last.get("created_at")),
                        metadata={"thread": ticket_id, "kind": "comment", "verified": VERIFIED},
                    )
                )
    if not out.items:
        out.ignored = "the ticket has no description and no customer reply in Freshdesk"
    return out


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The ticket (and the requester's reply): from Freshdesk's API when `confirm` fetched it,
    else from the rule's JSON."""
    refuse_duplicate_keys(req.body)
    hook = _hook(payload)
    ticket_id = _ticket_id(hook)
    out = Normalised(event_id=event_key(None, req.body), event=_event(hook))
    if req.fetched is not None:
        return _verified(out, ticket_id, dict(req.fetched))
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
    if out.event == REPLY and comment:
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
    confirm=confirm,
)
