"""Web sign-ins (web_session): one row per browser signed in with an API key."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.core.db import UTCDateTime, utcnow


class WebSession(SQLModel, table=True):
    """A browser's sign-in. The cookie holds a random token; only its SHA-256 is kept, so the
    table alone opens no session. The key is kept as a keyed fingerprint: a session whose key
    left API_KEYS no longer counts."""

    __tablename__ = "web_session"

    token_hash: str = Field(primary_key=True, max_length=64)  # sha256 hex of the cookie token
    key_fingerprint: str = Field(max_length=64)  # HMAC-SHA256 hex of the API key used
    csrf_token: str = Field(max_length=64)  # echoed by every form of this session
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
