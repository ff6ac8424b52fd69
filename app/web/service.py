"""Web sign-ins: create, find and end the server-side sessions behind the browser cookie."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import delete
from sqlmodel import Session, col, select

from app.core.db import begin_write, utcnow
from app.web.models import WebSession

# A cookie token is secrets.token_urlsafe(32): 43 characters. Anything much longer is junk
# and is not worth hashing.
MAX_TOKEN_CHARS = 128


def token_hash(token: str) -> str:
    """What the table keeps of a cookie token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def key_fingerprint(key: str, *, secret: str) -> str:
    """A keyed fingerprint of an API key: says which key opened a session, and without
    `secret` gives nothing to test guesses against."""
    return hmac.new(secret.encode(), b"web session key\x00" + key.encode(), "sha256").hexdigest()


@lru_cache(maxsize=16)
def _fingerprints(keys: tuple[str, ...], secret: str) -> frozenset[str]:
    return frozenset(key_fingerprint(k, secret=secret) for k in keys)


def create_session(
    session: Session, *, key: str, secret: str, ttl_s: int
) -> tuple[str, WebSession]:
    """A new sign-in for `key` lasting `ttl_s`; returns the cookie token (kept nowhere else)
    and the row. Expired sign-ins are deleted on the way."""
    now = utcnow()
    begin_write(session)
    session.exec(delete(WebSession).where(col(WebSession.expires_at) <= now))
    token = secrets.token_urlsafe(32)
    row = WebSession(
        token_hash=token_hash(token),
        key_fingerprint=key_fingerprint(key, secret=secret),
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.commit()
    return token, row


def find_session(
    session: Session, *, token: str | None, keys: tuple[str, ...], secret: str
) -> WebSession | None:
    """The live sign-in behind a cookie token: not expired, and its key still in `keys`."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    row = session.exec(
        select(WebSession).where(col(WebSession.token_hash) == token_hash(token))
    ).first()
    if row is None or row.expires_at <= utcnow():
        return None
    if row.key_fingerprint not in _fingerprints(keys, secret):
        return None
    return row


def end_session(session: Session, *, token: str | None) -> bool:
    """Delete the sign-in behind a cookie token; True when there was one."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return False
    begin_write(session)
    result = session.exec(delete(WebSession).where(col(WebSession.token_hash) == token_hash(token)))
    session.commit()
    return bool(getattr(result, "rowcount", 0))
