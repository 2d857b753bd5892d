"""Deterministic identifiers: the same inputs always give the same ``delivery_id``.

That is what makes a retry, a restart or a replay harmless: the sinks' ledger and the in-app table
are keyed on it, so the second copy of a delivery is recognised and not sent again.
"""
from __future__ import annotations

import hashlib


def delivery_id(kind: str, channel: str, user_id: str, event_ids: list[str] | tuple[str, ...], window: str = "") -> str:
    """A 32-hex id from the delivery's kind, channel, user, event ids (order-free) and window label."""
    # each part's UTF-8 followed by a unit separator, hashed in one call
    text = "\x1f".join((kind, channel, user_id, window, *sorted(event_ids))) + "\x1f"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def short_key(key: str, limit: int = 256) -> str:
    """``key`` itself up to ``limit`` characters, else ``"#"`` and a 32-hex digest of it: what a user's state
    stores of a producer's ``dedup_key`` or ``cancel_key``: equal keys stay equal, and the state stays bounded."""
    if len(key) <= limit:
        return key
    return "#" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
