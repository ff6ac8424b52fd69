"""What every provider shares: the request it verifies, what it returns, signature helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from app.core.errors import InvalidInput, Unauthorized
from app.ingest.schemas import TicketCreate


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A delivery as received: raw bytes (what is signed), lower-cased headers, arrival time."""

    body: bytes
    headers: Mapping[str, str]
    now: datetime
    secret: str
    max_age_s: int

    def header(self, name: str) -> str | None:
        """A header's value, case-insensitively; None when absent or blank."""
        value = self.headers.get(name.lower())
        return value.strip() if value and value.strip() else None


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
    """An ISO 8601 string or a Unix time (seconds or milliseconds) as an aware UTC datetime."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return parse_time(int(text))
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
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


class _TextExtractor(HTMLParser):
    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "blockquote", "h1", "h2", "h3", "h4"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(value: Any) -> str:
    """Plain text of an HTML fragment (Intercom, Help Scout, Front and Freshdesk send HTML)."""
    if not isinstance(value, str):
        return ""
    if "<" not in value and "&" not in value:
        return value.strip()
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
