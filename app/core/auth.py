"""API keys: every /v1 endpoint but the webhooks needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.deps import ServicesDep
from app.core.errors import Unauthorized

# auto_error=False: a missing header gets our own 401 body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key from the API_KEYS setting.")


async def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries one of the configured API keys."""
    if credentials is None:
        raise _unauthorized("Send an API key as 'Authorization: Bearer <key>'.", "missing_api_key")
    if not matches_any(credentials.credentials, services.api_keys):
        raise _unauthorized("The API key is not valid.", "invalid_api_key")


def matches_any(given: str, keys: tuple[str, ...]) -> bool:
    """True when `given` equals one of `keys`; every key is compared, in constant time, so
    timing says nothing about which was close."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    return matched


def _unauthorized(message: str, code: str) -> Unauthorized:
    err = Unauthorized(message, code=code)
    err.headers = {"WWW-Authenticate": "Bearer"}
    return err


ApiKeyDep = Depends(require_api_key)
