"""What every state-changing form must pass before it is acted on.

A form POST must declare a form content type (anything else: 415; a cross-site page can send
`text/plain` without a preflight), come from this site (Origin, else Referer, when the browser
sends one: 403 otherwise) and carry a `csrf_token` field matching the sign-in's token (403).
The sign-in form has no session yet: its token is a signed double-submit cookie instead (a
random value in a short-lived cookie, and its HMAC in the form), so a page elsewhere can
neither read the token nor plant a cookie that matches one it made up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from starlette import formparsers
from starlette.formparsers import MultiPartException, MultiPartParser

from app.core.body import UnsupportedMediaType, read_body
from app.core.errors import AppError, InvalidInput

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM_BYTES = 64_000
MAX_FORM_FIELDS = 20
CSRF_FIELD = "csrf_token"
LOGIN_COOKIE = "issuelens_login"
LOGIN_FORM_TTL_S = 3600
# API processes on different machines may disagree about the time by a little.
CLOCK_SKEW_S = 60
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Forbidden(AppError):
    """The request may not do this: sent from another site, or without the form's token."""

    status_code = 403
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class PostedForm:
    """A form POST's fields, or the reason it must be refused (`problem`)."""

    values: dict[str, str] = field(default_factory=dict)
    problem: AppError | None = None

    def get(self, name: str) -> str:
        """A field's value ('' when absent)."""
        return self.values.get(name, "")


def check_content_type(request: Request) -> None:
    """Refuse (415) a body that is not url-encoded or multipart form data."""
    declared = request.headers.get("content-type", "")
    ctype = declared.split(";")[0].strip().lower()
    if ctype not in FORM_TYPES:
        shown = repr(ctype) if ctype else "none"
        raise UnsupportedMediaType(
            f"Forms are sent as application/x-www-form-urlencoded or multipart/form-data; "
            f"this request's Content-Type is {shown}."
        )


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, default ports filled in; None when it has none."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def own_origin(request: Request) -> str:
    """This request's origin as the browser addressed it: scheme://Host."""
    host = request.headers.get("host") or request.url.netloc
    return f"{request.url.scheme}://{host}"


def check_origin(request: Request) -> None:
    """Refuse (403) a request whose Origin, or else Referer, is another site's."""
    origin = request.headers.get("origin")
    if origin is not None:
        header, sent = "Origin", origin
    else:
        referer = request.headers.get("referer")
        if referer is None:
            return  # neither sent (some privacy settings): the form token still guards it
        header, sent = "Referer", referer
    expected = own_origin(request)
    if _origin(sent) is None or _origin(sent) != _origin(expected):
        raise Forbidden(
            f"This form was sent from another site ({header} {sent[:100]!r}, expected "
            f"{expected!r}); open the page on this site and submit the form from there.",
            code="cross_origin",
        )


def check_csrf(form: PostedForm, expected: str) -> None:
    """Refuse (403) a form whose csrf_token is not `expected` (compared in constant time)."""
    given = form.get(CSRF_FIELD)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden(
            "The form's csrf_token is missing or does not belong to this sign-in; reload the "
            "page and submit the form again.",
            code="csrf_failed",
        )


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _read(request: Request) -> dict[str, str]:
    raw = await read_body(request, max_bytes=MAX_FORM_BYTES)
    ctype = (raw.content_type or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        if formparsers.multipart is None:  # python-multipart missing from the install
            raise UnsupportedMediaType(
                "This installation cannot read multipart/form-data; send the form as "
                "application/x-www-form-urlencoded."
            )
        parser = MultiPartParser(
            request.headers,
            _one(raw.data),
            max_files=0,  # no form of ours uploads a file
            max_fields=MAX_FORM_FIELDS,
            max_part_size=MAX_FORM_BYTES,
        )
        try:
            parsed = await parser.parse()
        except MultiPartException as exc:
            raise InvalidInput(
                f"The form could not be read: {exc.message}", code="invalid_form"
            ) from None
        pairs = [(k, v) for k, v in parsed.multi_items() if isinstance(v, str)]
    else:
        try:
            pairs = parse_qsl(
                raw.data.decode("utf-8", "replace"),
                keep_blank_values=True,
                max_num_fields=MAX_FORM_FIELDS,
            )
        except ValueError:
            raise InvalidInput(
                f"The form has more than {MAX_FORM_FIELDS} fields.", code="invalid_form"
            ) from None
    # NUL characters: no database column stores them.
    return {k: v.replace("\x00", "") for k, v in pairs}


async def posted_form(request: Request) -> PostedForm:
    """The POSTed form after the content type and origin checks; the route checks the token."""
    try:
        check_content_type(request)
        check_origin(request)
        return PostedForm(await _read(request))
    except AppError as exc:
        return PostedForm(problem=exc)


PostedFormDep = Annotated[PostedForm, Depends(posted_form)]


# ---- the sign-in form's token ----------------------------------------------------------------


def login_signature(nonce: str, secret: str) -> str:
    """The sign-in form's token for the nonce in its cookie."""
    key = hashlib.sha256(b"issuelens login form\x00" + secret.encode()).digest()
    return hmac.new(key, nonce.encode(), "sha256").hexdigest()


def _login_nonce_age(nonce: str, now: float) -> float | None:
    issued, _, rest = nonce.partition(".")
    if not issued.isascii() or not issued.isdigit() or len(issued) > 12 or not rest:
        return None
    return now - int(issued)


def login_token(cookie: str | None, *, secret: str) -> tuple[str, str]:
    """(cookie value, form value) for the sign-in form: the browser's cookie when it is still
    fresh (so two open tabs both work), else a new one."""
    now = time.time()
    age = _login_nonce_age(cookie, now) if cookie and len(cookie) <= 64 else None
    if cookie is None or age is None or not -CLOCK_SKEW_S <= age < LOGIN_FORM_TTL_S - 300:
        cookie = f"{int(now)}.{secrets.token_urlsafe(18)}"
    return cookie, login_signature(cookie, secret)


def check_login_token(cookie: str | None, form: PostedForm, *, secret: str) -> None:
    """Refuse (403) a sign-in whose form token does not match its fresh cookie."""
    given = form.get(CSRF_FIELD)
    age = _login_nonce_age(cookie, time.time()) if cookie and len(cookie) <= 64 else None
    if (
        cookie is None
        or age is None
        or not -CLOCK_SKEW_S <= age <= LOGIN_FORM_TTL_S
        or not given
        or not hmac.compare_digest(given.encode(), login_signature(cookie, secret).encode())
    ):
        raise Forbidden(
            "The sign-in form expired or was not sent from this site's sign-in page; it has "
            "been reloaded: enter the API key again.",
            code="csrf_failed",
        )
