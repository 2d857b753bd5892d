"""Deduplication: the same ``dedup_key`` (or ``event_id`` when it has none) within a window is one notification.

The state is one user's, so the key names only the event: ``k:<dedup_key>`` or ``id:<event_id>``. Its
entry is ``[first event_id, until_ms]``: kept small on purpose, since it is written with the user's
state for every batch. An entry at or past ``until_ms`` no longer counts, and the clock expunges it.
Reading the same record again after a crash is not this module's matter: the policy skips any record
at or below the offset the user's state has taken in.
"""
from __future__ import annotations

from typing import Any, Mapping

from agents.ids import short_key

Seen = list  # [event_id, until_ms]


def dedup_key(event: Mapping[str, Any]) -> str:
    """The key within a user's state: the producer's dedup_key (a digest of it beyond 256 characters,
    ``ids.short_key``), else the event id."""
    key = event.get("dedup_key")
    return f"k:{short_key(key)}" if key else f"id:{event['event_id']}"


def is_duplicate(previous: Seen | None, now_ms: int) -> bool:
    """True when an event with the same key was accepted and its window has not ended at ``now_ms``."""
    return previous is not None and now_ms < until(previous)


def seen(event_id: str, now_ms: int, window_ms: int) -> Seen:
    return [event_id, now_ms + window_ms]


def until(entry) -> int:  # noqa: ANN001
    """When an entry stops counting; also reads the dict entries of states written before this format."""
    return entry[1] if isinstance(entry, list) else int(entry.get("until") or entry.get("at_ms", 0) + 300_000)
