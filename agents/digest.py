"""Digests: everything a user was held back for over a period, as one DIGEST delivery on one channel.

The rule: one line per type, most important group first (its highest priority, then the larger
count, then the type name), each with its count and its ``top_n`` items, highest priority first,
then newest, then by ``event_id``; e.g. "Task deadlines (5): Report due; Launch plan due; Budget
due; and 2 more". The output is the same whatever the order of ``events``, and an ``event_id`` seen
twice counts once, so a replay yields the same ``delivery_id``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from agents.batching import canonical, item_data, one_line, type_words
from agents.ids import delivery_id
from agents.types import DeliveryRequest
from agents.validate import to_ms
from herald.enums import urgency

_GROUP_NAMES = {
    "TASK_DEADLINE": "Task deadlines",
    "HABIT_REMINDER": "Habit reminders",
    "COMMENT": "Comments",
    "PROJECT_MILESTONE": "Project milestones",
}


def group_name(type_: str) -> str:
    """The heading of a type's line: "Task deadlines", or e.g. "Billing alert notifications"."""
    if type_ in _GROUP_NAMES:
        return _GROUP_NAMES[type_]
    return f"{type_words(type_)} notifications".strip().capitalize()


def _by_importance(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Highest priority first, then newest, then by ``event_id``."""
    if len(events) == 1:  # a digest's type with one event, the usual case: nothing to order
        return events
    return sorted(events, key=lambda e: (-urgency(e["priority"]), -to_ms(e["occurred_at"]), e["event_id"]))


def _group_line(type_: str, ranked: list[Mapping[str, Any]], top_n: int) -> str:
    """A type's line from its events, ``ranked`` most important first (``_by_importance``)."""
    head = f"{group_name(type_)} ({len(ranked)})"
    if top_n <= 0:
        return head
    top = ranked[:top_n]
    items = [one_line(e["title"]) for e in top]
    if len(ranked) > len(top):
        items.append(f"and {len(ranked) - len(top)} more")
    return f"{head}: {'; '.join(items)}"


def digest_request(user_id: str, channel: str, events: Sequence[Mapping[str, Any]], period_start: int,
                   period_end: int, label: str, top_n: int = 3) -> DeliveryRequest | None:
    """One DIGEST DeliveryRequest for ``events`` of ``user_id`` over ``[period_start, period_end)``; None if none.

    ``label`` starts the title ("Your daily digest" -> "Your daily digest: 12 notifications");
    ``top_n`` of 0 or less lists counts only. ``data`` has "count.<TYPE>" per type, "total",
    "period_start", "period_end", and ``item.<n>.type/title/action_url`` for the first items (group by group,
    most important first) so a template can link each one. Raises ValueError if an event is for another user.
    """
    if not events:
        return None
    for event in events:
        if event["user_id"] != user_id:
            raise ValueError(f"event {event['event_id']} is for {event['user_id']}, not {user_id}")
    ordered = canonical(events)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for event in ordered:
        groups.setdefault(event["type"], []).append(event)
    # each group ranked once: its first event has its highest priority, which orders the groups
    ranked = {t: _by_importance(g) for t, g in groups.items()}
    order = list(groups) if len(groups) == 1 else sorted(
        groups, key=lambda t: (-urgency(ranked[t][0]["priority"]), -len(groups[t]), t))
    ids = [e["event_id"] for e in ordered]
    n = len(ids)
    data = {f"count.{t}": str(len(groups[t])) for t in order}
    data.update(total=str(n), period_start=str(period_start), period_end=str(period_end))
    data.update(item_data([e for t in order for e in ranked[t]]))  # each item with its link
    return {
        # one digest per user, channel and period: named by the period, not by what it holds, so a
        # period released again after a crash is the digest already sent
        "delivery_id": delivery_id("DIGEST", channel, user_id, [], window=f"{period_start}-{period_end}"),
        "user_id": user_id,
        "channel": channel,
        "kind": "DIGEST",
        "event_ids": ids,
        "type": "DIGEST",
        "priority": ranked[order[0]][0]["priority"],  # the first group holds the highest
        "title": f"{label}: {n} notification{'' if n == 1 else 's'}",
        "body": "\n".join(_group_line(t, ranked[t], top_n) for t in order),
        "data": data,
        "created_at": period_end,
    }
