"""A per-client limit on failed API keys: what slows down guessing a key.

Every failed key (a wrong Bearer key on /v1, a wrong key in the sign-in form) counts against
the client's address. API_KEY_FAILURE_LIMIT failures within API_KEY_FAILURE_WINDOW_S of the
first one block the address for API_KEY_FAILURE_WINDOW_S: its requests get 429 with
Retry-After and no key is checked, so a guess made during the block learns nothing. A missing
key is no guess and is not counted; webhook signatures are not counted either (senders retry
bad signatures on their own). The table is an LRU capped at MAX_CLIENTS addresses, so a flood
of addresses costs bounded memory (the oldest entries go first).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from app.core.db import utcnow
from app.core.deps import ServicesDep
from app.core.errors import AppError

MAX_CLIENTS = 10_000


class TooManyFailures(AppError):
    """The client sent too many wrong API keys; it must wait before trying again."""

    status_code = 429
    code = "too_many_failed_keys"

    @classmethod
    def waiting(cls, seconds: float) -> TooManyFailures:
        """The error for a client blocked for `seconds` more, with its Retry-After header."""
        wait = max(1, math.ceil(seconds))
        at = utcnow() + timedelta(seconds=wait)
        err = cls(
            f"Too many wrong API keys from this address. Try again in {wait} seconds "
            f"(after {at:%Y-%m-%d %H:%M:%S} UTC); no key is checked until then."
        )
        err.headers = {"Retry-After": str(wait)}
        return err


@dataclass(slots=True)
class _Entry:
    started: float  # the first failure of the current window
    count: int
    blocked_until: float = 0.0


class FailureLimiter:
    """Failures per client within a window; thread-safe and bounded to `max_clients`."""

    def __init__(
        self,
        *,
        limit: int,
        window_s: float,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError("limit, window_s and max_clients must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def blocked_for(self, client: str) -> float:
        """Seconds until `client` may try a key again; 0.0 when it is not blocked."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(client)
            if entry is None:
                return 0.0
            if entry.blocked_until > now:
                return entry.blocked_until - now
            if now - entry.started >= self.window_s:
                del self._entries[client]  # nothing left to remember
            return 0.0

    def check(self, client: str) -> None:
        """Raise TooManyFailures (429, Retry-After) while `client` is blocked."""
        wait = self.blocked_for(client)
        if wait > 0:
            raise TooManyFailures.waiting(wait)

    def record_failure(self, client: str) -> None:
        """Count one failed key for `client`; the failure that reaches the limit blocks it."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(client)
            expired = entry is not None and (
                now - entry.started >= self.window_s and now >= entry.blocked_until
            )
            if entry is None or expired:
                entry = _Entry(started=now, count=0)
                self._entries[client] = entry
            self._entries.move_to_end(client)
            entry.count += 1
            if entry.count >= self.limit:
                # The block outlasts the window, so the next failure after it starts afresh.
                entry.blocked_until = now + self.window_s
            while len(self._entries) > self.max_clients:
                self._entries.popitem(last=False)


def client_address(request: Request) -> str:
    """The address failures are counted against (uvicorn sets it from X-Forwarded-For only
    for proxies listed in FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client is not None else "unknown"


_create_lock = threading.Lock()


async def get_key_guard(request: Request, services: ServicesDep) -> FailureLimiter:
    """The app's failure limiter, made on first use (each app, so each test, has its own)."""
    guard: FailureLimiter | None = getattr(request.app.state, "key_guard", None)
    if guard is None:
        with _create_lock:
            guard = getattr(request.app.state, "key_guard", None)
            if guard is None:
                guard = FailureLimiter(
                    limit=services.settings.api_key_failure_limit,
                    window_s=services.settings.api_key_failure_window_s,
                )
                request.app.state.key_guard = guard
    return guard


KeyGuardDep = Annotated[FailureLimiter, Depends(get_key_guard)]
