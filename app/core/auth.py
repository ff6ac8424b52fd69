"""API keys: every /v1 endpoint but the webhooks needs `Authorization: Bearer <key>`.

Wrong keys count against the client's address (app.core.guard): past the limit the address
gets 429 for a while, before any key is looked at.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.deps import ServicesDep
from app.core.errors import Unauthorized
from app.core.guard import KeyGuardDep, client_address

# auto_error=False: a missing header gets our own 401 body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key from the API_KEYS setting.")


async def require_api_key(
    request: Request,
    services: ServicesDep,
    guard: KeyGuardDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request unless it carries one of the configured API keys (401), and refuse
    a client that sent too many wrong ones (429) without looking at its key."""
    client = client_address(request)
    guard.check(client)
    if credentials is None:
        raise _unauthorized("Send an API key as 'Authorization: Bearer <key>'.", "missing_api_key")
    if not matches_any(credentials.credentials, services.api_keys):
        guard.record_failure(client)
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
