"""What every provider shares: the request it verifies, what it returns, signature helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lxml import etree
from lxml import html as lxml_html

from app.core import clock
from app.core.errors import InvalidInput, Unauthorized
from app.ingest.schemas import TicketCreate

if TYPE_CHECKING:
    from app.core.config import Settings


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A delivery as received: raw bytes (what is signed), every value of each header (names
    lower-cased, values in arrival order), arrival time; `fetched` holds what a provider's own
    API said about the delivery (Freshdesk's verified mode), None otherwise."""

    body: bytes
    headers: Mapping[str, tuple[str, ...]]
    now: datetime
    secret: str
    max_age_s: int
    fetched: Mapping[str, Any] | None = None

    @staticmethod
    def collect(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
        """Headers as received (repeats included) grouped by lower-cased name."""
        grouped: dict[str, tuple[str, ...]] = {}
        for name, value in pairs:
            key = name.lower()
            grouped[key] = (*grouped.get(key, ()), value)
        return grouped

    def header(self, name: str) -> str | None:
        """A header's value, case-insensitively; None when absent or blank.

        Every header a provider reads is a credential or decides what is stored (signature,
        timestamp, event, shared secret), so it must arrive exactly once: with two copies, a
        proxy or library that keeps the first and one that keeps the last would check different
        values. A repeated header is a 401, whatever its copies hold."""
        values = self.headers.get(name.lower(), ())
        if len(values) > 1:
            raise unauthorized(
                f"{name} was sent {len(values)} times; send it exactly once.",
                code="duplicate_header",
            )
        value = values[0].strip() if values else ""
        return value or None


@dataclass(slots=True)
class Normalised:
    """The tickets a delivery carries, the event id it is deduplicated on, or why it is ignored.

    `updated_at` is the provider's own change time: a late redelivery of an older version of a
    ticket never overwrites a newer one."""

    event_id: str
    event: str
    items: list[TicketCreate] = field(default_factory=list)
    ignored: str | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """A helpdesk: how its signature is checked and how its payload becomes tickets."""

    name: str
    verify: Callable[[WebhookRequest], None]
    normalise: Callable[[Any, WebhookRequest], Normalised]
    signature_help: str
    # Awaited after `verify` and before `normalise`: asks the helpdesk's own API about the
    # delivery and returns the request with `fetched` set (unchanged when not configured).
    confirm: Callable[[WebhookRequest, Settings], Awaitable[WebhookRequest]] | None = None


def unauthorized(message: str, code: str = "invalid_signature") -> Unauthorized:
    """A 401 for a delivery whose signature is missing, wrong or stale."""
    return Unauthorized(message, code=code)


def require_secret(req: WebhookRequest, provider: str) -> bytes:
    """The provider's secret; every delivery is refused while none is configured."""
    if not req.secret:
        raise unauthorized(
            f"No secret is configured for {provider}: set {provider.upper()}_WEBHOOK_SECRET to the "
            "signing secret shown in the helpdesk's webhook settings.",
            code="webhook_not_configured",
        )
    return req.secret.encode()


def hmac_digest(secret: bytes, message: bytes, algo: str) -> bytes:
    """HMAC of `message` with `secret` (algo: sha1 or sha256)."""
    return hmac.new(secret, message, getattr(hashlib, algo)).digest()


def same(expected: bytes, given: str | None, *, encoding: str) -> bool:
    """Constant-time comparison of a digest with its base64 or hex rendering from a header."""
    if given is None:
        return False
    rendered = base64.b64encode(expected) if encoding == "base64" else expected.hex().encode()
    return hmac.compare_digest(rendered, given.strip().encode())


def check_fresh(req: WebhookRequest, when: datetime, header: str) -> None:
    """Refuse a signed timestamp more than max_age_s away from now (a replayed delivery)."""
    age = abs((req.now - when).total_seconds())
    if age > req.max_age_s:
        raise unauthorized(
            f"{header} is {int(age)} s away from the server's clock; deliveries older than "
            f"{req.max_age_s} s are refused as replays.",
            code="stale_signature",
        )


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 string or a Unix time (seconds or milliseconds) as an aware UTC datetime;
    None when absent, unreadable or outside app.core.clock's range, so that the ticket falls
    back to the time it was received rather than the signed delivery being refused."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            # float() of a 400-digit integer overflows; NaN and infinities are not finite.
            seconds = float(value)
            return clock.from_unix(seconds / 1000 if seconds > 1e11 else seconds)
        if isinstance(value, str):
            text = value.strip()
            if text.isascii() and text.isdigit():
                return parse_time(int(text))
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return clock.to_utc_or_none(parsed)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def iso(value: Any) -> str | None:
    """parse_time rendered as ISO 8601, for metadata."""
    when = parse_time(value)
    return when.isoformat() if when else None


def compact(**fields: Any) -> dict[str, Any]:
    """The fields that have a value (metadata keeps no nulls)."""
    return {k: v for k, v in fields.items() if v is not None}


def text_id(value: Any) -> str | None:
    """An id from a payload as text (providers send numbers and strings); None when absent."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text or None


def obj(value: Any, where: str) -> dict[str, Any]:
    """`value` when it is a JSON object, else a 422 naming the field."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object.", code="invalid_payload")
    return value


def pick(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a step is missing or not an object."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# Event ids are stored in webhook_event.event_id (255 characters); a longer one from a signed
# body is kept as its hash instead of failing the insert on PostgreSQL alone.
_MAX_EVENT_ID = 128


def event_key(value: str | None, body: bytes) -> str:
    """The id a delivery is deduplicated on: the provider's event id from the signed body, or
    the body's sha256 when it has none (never a header: headers are not signed)."""
    if value is None:
        return hashlib.sha256(body).hexdigest()
    if len(value) > _MAX_EVENT_ID:
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidInput(
                f"The body names the key {key!r} more than once in one object. JSON parsers "
                "disagree on which copy counts (the first or the last), so the same signed "
                "bytes could be read as two different deliveries: send each key once.",
                code="duplicate_key",
            )
        seen.add(key)
    return dict(pairs)


def refuse_duplicate_keys(body: bytes) -> None:
    """A 422 when any object in the (already parsed, valid) JSON body repeats a key.

    A webhook body built from a template (Zendesk triggers, Freshdesk rules, generic senders)
    with a value spliced in unescaped can carry a second `"ticket_id"` that one parser reads and
    another does not; refusing such a body keeps what is checked and what is stored the same."""
    if body.count(b'"') < 4:
        return  # fewer than two keys: nothing can repeat
    try:
        json.loads(body, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError):
        return  # not this check's concern: parse_json already accepted or refused the body


# Block elements: their text goes on lines of its own.
_BREAKS = frozenset({"br", "p", "div", "li", "tr", "blockquote", "h1", "h2", "h3", "h4"})
_SKIP = frozenset({"script", "style"})
# Characters libxml2 refuses (C0 controls but tab and line breaks): dropped before parsing.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TAG = re.compile(r"<[^<>]{0,2000}>")
# libxml2's HTML parser (lxml): linear in the input. The standard library's HTMLParser is
# quadratic on some inputs ("<a " repeated: 80 KB took 76 s on the event loop). huge_tree
# lifts the nesting limit from 256 to 2,048 levels.
_PARSER = lxml_html.HTMLParser(
    recover=True,
    no_network=True,
    remove_comments=True,
    remove_pis=True,
    default_doctype=False,
    huge_tree=True,
)


def html_to_text(value: Any) -> str:
    """Plain text of an HTML fragment (Intercom, Help Scout, Front and Freshdesk send HTML)."""
    if not isinstance(value, str):
        return ""
    if "<" not in value and "&" not in value:
        return value.strip()
    clean = _NOT_XML.sub("", value)
    parts: list[str] = []
    try:
        root = lxml_html.fragment_fromstring(clean, create_parent="div", parser=_PARSER)
    except (etree.ParserError, ValueError):
        root = None
    skip = 0
    for event, element in etree.iterwalk(root, events=("start", "end")) if root is not None else ():
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _SKIP:
                skip += 1
            elif tag in _BREAKS:
                parts.append("\n")
            if not skip and element.text:
                parts.append(element.text)
        else:
            if tag in _SKIP:
                skip -= 1
            elif tag in _BREAKS:
                parts.append("\n")
            if not skip and element.tail:
                parts.append(element.tail)
    text = _lines("".join(parts))
    if not text:
        # Nothing the parser could place (nesting past its limit): the words, tags removed.
        text = _lines(html.unescape(_TAG.sub("\n", clean)))
    return text


def _lines(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)
