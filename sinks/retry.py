"""When a failed attempt is tried again: exponential backoff with jitter, bounded, and a provider's
Retry-After respected.

The delay before attempt ``n + 1`` (after ``n`` failed ones) is drawn uniformly from
``[d/2, d]`` with ``d = min(base * 2**(n-1), cap)`` ("equal jitter": never immediate, never in lockstep
with the other retries of the same outage). A provider's ``Retry-After`` is a floor (still capped at
``cap``). Where a waiting request lives meanwhile (the ledger, not the partition) is the runtime's matter.
"""
from __future__ import annotations

import random


def backoff(failed_attempts: int, base: float, cap: float, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failed_attempts`` (>= 1) failures."""
    rng = rng or random
    d = min(base * (2 ** max(failed_attempts - 1, 0)), cap)
    delay = rng.uniform(d / 2, d)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, cap))
    return delay


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After header's delay in seconds (delta-seconds form only; a date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
