"""Help Scout: mailbox webhooks; the event name is in the X-HelpScout-Event header.

Signature: X-HelpScout-Signature = base64(HMAC-SHA1(secret, raw body)).
`convo.created` stores the conversation (its first customer thread) as the ticket;
`convo.customer.reply.created` stores the newest customer thread as
`<conversation id>/threads/<thread id>`. Agent replies, notes and other events are ignored.

Help Scout signs the body only, not the X-HelpScout-Event header, so nothing that decides
identity comes from the header: the event id is the body's sha256 (a Help Scout retry resends the
same body with the same event, so it is a duplicate), and a customer thread's ticket key comes
from the body alone (the conversation's first customer thread is the conversation's ticket, every
later one `<id>/threads/<thread id>`). A signed body resent under another event name therefore
repeats the event id, and even a first delivery under the wrong name can only name tickets the
body itself holds: never a second copy of the same text.
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

SIGNATURE = "X-HelpScout-Signature"
EVENT = "X-HelpScout-Event"
STORED = frozenset({"convo.created", "convo.customer.reply.created"})


def verify(req: WebhookRequest) -> None:
    """Check the base64 HMAC-SHA1 of the raw body (and that the event header came once)."""
    secret = require_secret(req, "helpscout")
    signature = req.header(SIGNATURE)
    req.header(EVENT)  # a repeated event header is refused before anything else
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


def _ticket(
    convo: dict[str, Any],
    convo_id: str,
    thread: dict[str, Any] | None,
    *,
    first: bool,
    created: bool,
    fallback: str,
) -> TicketCreate | str:
    """The ticket for one customer thread (None: the conversation without embedded threads),
    or why there is none. The key depends on the thread's place in the signed body only; the
    preview stands in for an empty opening thread only in a convo.created body (later, the
    preview is the newest thread's, perhaps an agent's)."""
    subject = convo.get("subject") if isinstance(convo.get("subject"), str) else None
    if first:
        body = html_to_text(thread.get("body")) if thread else ""
        body = body or (html_to_text(convo.get("preview")) if created else "")
        if not body:
            return "the conversation has no customer text"
        meta = compact(
            number=convo.get("number"),
            mailbox=text_id(convo.get("mailboxId")),
            status=convo.get("status"),
            via=pick(convo, "source", "type"),
            source_updated_at=iso(convo.get("userUpdatedAt") or convo.get("updatedAt")),
        )
        return TicketCreate(
            source="helpscout",
            external_id=convo_id,
            subject=subject,
            body=body,
            author=_author(convo, thread),
            created_at=parse_time(convo.get("createdAt")),
            metadata=meta or None,
        )
    assert thread is not None
    body = html_to_text(thread.get("body"))
    if not body:
        return "the customer's reply has no text"
    return TicketCreate(
        source="helpscout",
        external_id=f"{convo_id}/threads/{text_id(thread.get('id')) or fallback}",
        subject=subject,
        body=body,
        author=_author(convo, thread),
        created_at=parse_time(thread.get("createdAt")),
        metadata={"thread": convo_id, "kind": "reply"},
    )


def normalise(payload: Any, req: WebhookRequest) -> Normalised:
    """The customer's text from a conversation event."""
    event = req.header(EVENT)
    if event is None:
        raise InvalidInput(f"The {EVENT} header is missing.", code="invalid_payload")
    refuse_duplicate_keys(req.body)
    convo = obj(payload, "The body")
    # From the signed body only: the same body under another event name is the same event.
    out = Normalised(event_id=event_key(None, req.body), event=event)
    if event not in STORED:
        out.ignored = f"{event} carries no new customer text"
        return out
    convo_id = text_id(convo.get("id"))
    if convo_id is None:
        raise InvalidInput("id is missing: not a Help Scout conversation.", code="invalid_payload")
    threads = _customer_threads(convo)
    if event == "convo.created":
        thread = threads[0] if threads else None
    elif threads:
        thread = threads[-1]
    else:
        out.ignored = "no customer thread in the conversation"
        return out
    first = thread is None or thread is threads[0]
    ticket = _ticket(
        convo,
        convo_id,
        thread,
        first=first,
        created=event == "convo.created",
        fallback=out.event_id[:16],
    )
    if isinstance(ticket, str):
        out.ignored = ticket
    else:
        out.items.append(ticket)
    return out


PROVIDER = Provider(
    name="helpscout",
    verify=verify,
    normalise=normalise,
    signature_help=f"{SIGNATURE}: base64 HMAC-SHA1 of the raw body",
)
