"""Presence: whether a user counts as online when an event is decided.

The rule: a user is online when their latest presence entry says ``online`` and its ``expires_at``
(epoch ms) is after the decision time; no entry, an entry saying offline, or one that has expired
(at ``expires_at`` exactly, too) is offline. An entry's ``expires_at`` is never later than the TTL
after the presence record's own time (``expiry``): a connection whose API crashed cannot renew it,
so it must not keep the user online forever on its own claim.
"""
from __future__ import annotations


def online(entry: dict | None, now_ms: int) -> bool:
    """True when ``entry`` (``{"online", "expires_at", ...}``, or None) says online and has not expired at ``now_ms``."""
    if not entry or not entry.get("online", False):
        return False
    expires_at = entry.get("expires_at", 0)
    return isinstance(expires_at, int) and expires_at > now_ms


def expiry(record_expires_at_ms: int, record_time_ms: int, ttl_s: int) -> int:
    """When a connection announced by a presence record stops counting: its own ``expires_at``, but never
    later than ``ttl_s`` seconds after the record's time."""
    return min(record_expires_at_ms, record_time_ms + ttl_s * 1000)
