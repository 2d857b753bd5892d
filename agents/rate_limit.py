"""Rate limits: how many deliveries a user may get on one channel per minute, hour and day.

The rule: fixed windows aligned to the epoch (a minute starts at ``now // 60000 * 60000``, an hour
likewise, a day at UTC midnight), one counter per window, and a send is allowed when it fits in all
three. When it does not, the earliest time it would fit is the start of the next window of the
binding limit, or the latest of those starts when several are full. Because an hour starts on a
minute boundary and a day on an hour boundary, every window is fresh again at that time.

The counters are a small JSON-able dict, ``{"m": [window_start_ms, count], "h": [...], "d": [...]}``,
kept per user and channel in a table and its changelog. A stored window that starts *after* ``now``
(the clock stepped back, or a replay) is still counted as the current one, so going back in time
never frees capacity. A limit of 0 blocks every window: ``next_allowed`` then keeps answering the
next window start and the send never fits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WINDOWS = (("m", MINUTE_MS), ("h", HOUR_MS), ("d", DAY_MS))

Counters = dict[str, list[int]]


@dataclass(frozen=True)
class Limits:
    per_minute: int = 10
    per_hour: int = 100
    per_day: int = 500

    def with_max_per_hour(self, max_per_hour: int | None) -> Limits:
        """These limits with the hour capped by a user's ``max_per_hour`` (None: unchanged; below 0 counts as 0)."""
        if max_per_hour is None:
            return self
        return replace(self, per_hour=max(0, min(self.per_hour, max_per_hour)))


def _current(counters: Counters | None, key: str, size: int, now_ms: int) -> tuple[int, int]:
    """(window start, count so far) of window ``key`` as seen at ``now_ms``."""
    start = now_ms // size * size
    entry = (counters or {}).get(key)
    if entry and entry[0] >= start:
        return entry[0], entry[1]
    return start, 0


def next_allowed(counters: Counters | None, now_ms: int, limits: Limits) -> int | None:
    """None when one more send fits in every window at ``now_ms``, else the epoch ms at which it would."""
    blocked = None
    for key, size, cap in (("m", MINUTE_MS, limits.per_minute), ("h", HOUR_MS, limits.per_hour),
                           ("d", DAY_MS, limits.per_day)):
        start, count = _current(counters, key, size, now_ms)
        if count >= cap and (blocked is None or start + size > blocked):
            blocked = start + size
    return blocked


def record(counters: Counters | None, now_ms: int) -> Counters:
    """The counters after one send at ``now_ms``; a window whose start has passed restarts at 1."""
    out: Counters = {}
    for key, size in WINDOWS:
        start, count = _current(counters, key, size, now_ms)
        out[key] = [start, count + 1]
    return out


class GlobalLimiter:
    """A worker's token bucket over all its sends (to spare the providers): ``rate_per_s``, up to ``burst`` at once.

    Deliberately not stateful across restarts: it lives in memory and starts full, so a restart may let
    one extra burst through. The per-user limits above are the ones persisted; this one only smooths a
    worker's own output. Implemented as GCRA in integer microseconds so the time ``take`` returns is
    exact: taking again at that time succeeds. A clock that steps back only delays tokens.
    """

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._interval_us = max(1, round(1_000_000 / rate_per_s))
        self._tolerance_us = (burst - 1) * self._interval_us
        self._tat_us: int | None = None  # theoretical arrival time of the next token

    def take(self, now_ms: int) -> int | None:
        """Take a token: None if one was available at ``now_ms``, else the epoch ms when one will be."""
        now_us = now_ms * 1000
        tat = now_us if self._tat_us is None else max(self._tat_us, now_us)
        earliest_us = tat - self._tolerance_us
        if earliest_us > now_us:
            return -(-earliest_us // 1000)
        self._tat_us = tat + self._interval_us
        return None
