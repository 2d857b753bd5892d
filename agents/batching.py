"""Batching: a user's batchable events of one type for one channel, within a tumbling window, become one delivery.

The rule: windows are ``window_s`` long and aligned to the epoch, ``[start, end)``. Everything that
lands in one (user, type, channel, window) is emitted once, at the window's end, as a BATCH request;
a window holding more than ``max_batch_size`` events is emitted as several batches in order. CRITICAL
events and events with ``batchable`` false are never batched: ``batchable`` says which may be, and
the caller applies it.

Output is deterministic whatever the arrival order: events are put in canonical order
(``occurred_at``, then ``event_id``), and an ``event_id`` seen twice (a redelivered record appended to
the window again after a crash) counts once. The ``delivery_id`` of a window's batch names the user,
channel, type, window and chunk, not the events in it: a window released again after a crash, even
with an event more or less, is recognised by the sinks' ledgers as the batch already sent. Only a
batch cut early because it was full is named by its events (``by_content``), since one window may
then hold several.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from agents.ids import delivery_id
from agents.types import DeliveryRequest
from agents.validate import to_ms
from herald.enums import most_urgent

E = TypeVar("E", bound=Mapping[str, Any])  # an event as decoded, or what a user's state kept of it
BODY_LINES = 10
MAX_EVENT_IDS_CHARS = 1_000

# count -> (singular, plural) phrase after the number
_TITLES = {
    "TASK_DEADLINE": ("task deadline approaching", "task deadlines approaching"),
    "HABIT_REMINDER": ("habit reminder", "habit reminders"),
    "COMMENT": ("new comment", "new comments"),
    "PROJECT_MILESTONE": ("project milestone reached", "project milestones reached"),
}


def window(now_ms: int, window_s: int) -> tuple[int, int]:
    """The epoch-aligned window ``[start, end)`` holding ``now_ms``; ``window_s`` must be positive."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, not {window_s}")
    size = window_s * 1000
    start = now_ms // size * size
    return start, start + size


def batch_key(user_id: str, type_: str, channel: str, window_start: int) -> str:
    """The table key of one batch; JSON so that no user id or type can make two keys collide."""
    return json.dumps([user_id, type_, channel, window_start], ensure_ascii=False, separators=(",", ":"))


def batchable(event: Mapping[str, Any]) -> bool:
    """Whether the event may be merged: not CRITICAL, and ``batchable`` not false (missing means true)."""
    return event["priority"] != "CRITICAL" and event.get("batchable", True) is not False


def type_words(type_: str) -> str:
    """``"BILLING_ALERT"`` -> ``"billing alert"``."""
    return " ".join(w for w in re.split(r"[\s_\-.]+", type_.lower()) if w)


def title(type_: str, count: int) -> str:
    """A human title for ``count`` events of ``type_``: "3 new comments", "1 new billing alert notification"."""
    if type_ in _TITLES:
        singular, plural = _TITLES[type_]
    else:
        words = f"new {type_words(type_)}".rstrip()
        singular, plural = f"{words} notification", f"{words} notifications"
    return f"{count} {singular if count == 1 else plural}"


def highest_priority(events: Iterable[Mapping[str, Any]]) -> str:
    """The most urgent priority among ``events`` (``herald.enums.most_urgent``)."""
    return most_urgent(e["priority"] for e in events)


def canonical(events: Iterable[E]) -> list[E]:
    """Events by (``occurred_at``, ``event_id``), each ``event_id`` once (its first in that order)."""
    if isinstance(events, list) and len(events) == 1:  # one event (a digest or window of one): as it is
        return list(events)
    seen: set[str] = set()
    out = []
    for event in sorted(events, key=lambda e: (to_ms(e["occurred_at"]), e["event_id"])):
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out


def one_line(text: str) -> str:
    # a title with line breaks would break the one-event-per-line body
    return " ".join(text.split())


def split_full(events: Iterable[E], max_size: int) -> list[list[E]]:
    """The window's events in canonical order, cut into consecutive chunks of at most ``max_size``.

    Every distinct event appears exactly once; no events gives no chunks; ``max_size`` must be positive.
    """
    if max_size <= 0:
        raise ValueError(f"max_size must be positive, not {max_size}")
    ordered = canonical(events)
    return [ordered[i:i + max_size] for i in range(0, len(ordered), max_size)]


def _joined_ids(ids: list[str]) -> tuple[str, int]:
    """Whole ids, comma-joined, within ``MAX_EVENT_IDS_CHARS``; and how many were left out."""
    length = -1
    for i, event_id in enumerate(ids):
        length += len(event_id) + 1
        if length > MAX_EVENT_IDS_CHARS:
            return ",".join(ids[:i]), len(ids) - i
    return ",".join(ids), 0


MAX_ITEMS = 50  # items listed in a batch's or digest's data for the sinks' templates


def item_data(events: Sequence[Mapping[str, Any]], start: int = 0) -> dict[str, str]:
    """``item.<n>.type``, ``item.<n>.title`` and (when the event has one) ``item.<n>.action_url`` for the
    first ``MAX_ITEMS`` events, in the order given, numbered from ``start``: what a template needs to list
    each item with its link."""
    out: dict[str, str] = {}
    for n, event in enumerate(events[:MAX_ITEMS], start):
        out[f"item.{n}.type"] = event["type"]
        out[f"item.{n}.title"] = one_line(event["title"])
        url = (event.get("data") or {}).get("action_url")
        if url:
            out[f"item.{n}.action_url"] = url
    return out


def batch_request(user_id: str, channel: str, type_: str, events: Sequence[Mapping[str, Any]], window_start: int,
                  window_end: int, *, chunk: int = 0, chunks: int = 1, by_content: bool = False) -> DeliveryRequest:
    """One BATCH DeliveryRequest for the events of one user, type and channel in one window.

    Raises ValueError if ``events`` is empty, holds another user or type, or an event whose explicit
    ``channels`` exclude ``channel``. Whether an event may be batched at all is the caller's call
    (``batchable``): a throttled send released later may be merged even so. The body lists the first
    ten titles, then "and N more"; ``data["event_ids"]`` holds whole ids up to 1,000 characters
    (``event_ids_more`` says how many it left out: ``event_ids`` has them all). For chunk ``chunk``
    of ``chunks`` (see ``split_full``) the window label, hence the ``delivery_id``, names the chunk
    and ``data["part"]`` says "2/3".
    """
    if not events:
        raise ValueError("a batch needs at least one event")
    for event in events:
        if event["user_id"] != user_id or event["type"] != type_:
            raise ValueError(f"event {event['event_id']} is not ({user_id}, {type_}): a batch never mixes users or types")
        if event.get("channels") and channel not in event["channels"]:
            raise ValueError(f"event {event['event_id']} is not for channel {channel}")
    ordered = canonical(events)
    ids = [e["event_id"] for e in ordered]
    lines = [one_line(e["title"]) for e in ordered[:BODY_LINES]]
    if len(ordered) > BODY_LINES:
        lines.append(f"and {len(ordered) - BODY_LINES} more")
    joined, left_out = _joined_ids(ids)
    data = {"count": str(len(ids)), "event_ids": joined,
            "window_start": str(window_start), "window_end": str(window_end)}
    if left_out:
        data["event_ids_more"] = str(left_out)
    data.update(item_data(ordered))
    label = str(window_start)
    if chunks > 1:
        label = f"{window_start}#{chunk}"
        data["part"] = f"{chunk + 1}/{chunks}"
    return {
        "delivery_id": delivery_id("BATCH", channel, user_id, ids if by_content else [f"type:{type_}"], window=label),
        "user_id": user_id,
        "channel": channel,
        "kind": "BATCH",
        "event_ids": ids,
        "type": type_,
        "priority": highest_priority(ordered),
        "title": title(type_, len(ids)),
        "body": "\n".join(lines),
        "data": data,
        "created_at": window_end,
    }


def batch_requests(user_id: str, channel: str, type_: str, events: Sequence[Mapping[str, Any]], window_start: int,
                   window_end: int, max_size: int) -> list[DeliveryRequest]:
    """All the BATCH requests of one window: ``split_full`` into chunks, one ``batch_request`` each."""
    parts = split_full(events, max_size)
    return [batch_request(user_id, channel, type_, part, window_start, window_end, chunk=i, chunks=len(parts))
            for i, part in enumerate(parts)]
