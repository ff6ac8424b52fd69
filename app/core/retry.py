"""The one backoff every retry loop in the service uses.

Outbound deliveries, digest channels and the worker's error loop all wait `backoff(attempts,
base_s, cap_s)` before trying again: doubling from `base_s` per failure, capped, with +-20%
jitter so that many rows failing together do not retry in lock step.
"""

from __future__ import annotations

import random

JITTER = 0.2


def backoff(attempts: int, base_s: float, cap_s: float, *, jitter: float = JITTER) -> float:
    """Seconds to wait after `attempts` consecutive failures (1 = the first failure)."""
    exponent = min(max(0, attempts - 1), 62)  # 2**62 * base is far past any cap; no overflow
    delay = min(base_s * 2.0**exponent, cap_s)
    return delay * random.uniform(1 - jitter, 1 + jitter) if jitter else delay
