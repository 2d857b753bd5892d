"""Deduplication: the same ``dedup_key`` (or ``event_id`` when it has none) within a window is one notification.

The table entry remembers where the first copy was read (``source``: topic, partition, offset). Reading
that same record again, after a crash before the offset was committed, is not a duplicate: it is a
redelivery, and the pipeline must redo (idempotently) what it did the first time, or the
notification would be lost. An entry older than the window no longer counts and may be expunged.
"""
from __future__ import annotations

from typing import TypedDict


class Seen(TypedDict):
    event_id: str
    at_ms: int
    source: str


def dedup_key(event: dict) -> str:
    """The table key: per user, the producer's dedup_key, else the event id."""
    key = event.get("dedup_key")
    return f"{event['user_id']}\x1fk:{key}" if key else f"{event['user_id']}\x1fid:{event['event_id']}"


def is_duplicate(previous: Seen | None, source: str, now_ms: int, window_ms: int) -> bool:
    """True when an earlier, different record with the same key was accepted less than ``window_ms`` ago."""
    if previous is None or previous["source"] == source:
        return False
    return now_ms - previous["at_ms"] < window_ms


def expired(entry: Seen, now_ms: int, window_ms: int) -> bool:
    return now_ms - entry["at_ms"] >= window_ms
