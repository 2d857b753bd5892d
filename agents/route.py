"""Routing: which channels an accepted event goes to, and the records that say so.

The walking skeleton's rule: every non-duplicate event becomes one in-app notification (kind
SINGLE), unless the event names its own ``channels``, which win. Preferences, presence, quiet
hours, batching and digests refine this in later stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agents.ids import delivery_id
from agents.validate import to_ms

DEFAULT_CHANNELS = ("INAPP",)


@dataclass
class Routed:
    decision: dict
    requests: list[dict] = field(default_factory=list)


def channels_for(event: dict) -> list[str]:
    return list(event.get("channels") or DEFAULT_CHANNELS)


def route(event: dict, now_ms: int) -> Routed:
    """One SINGLE delivery per channel and a ROUTED decision naming them."""
    channels = channels_for(event)
    requests = [single_request(event, channel, now_ms) for channel in channels]
    decision = make_decision(event, "ROUTED", now_ms, channels=channels,
                             delivery_id=requests[0]["delivery_id"] if requests else None,
                             reason=f"routed to {', '.join(c.lower() for c in channels)}")
    return Routed(decision, requests)


def duplicate(event: dict, now_ms: int, first_event_id: str) -> Routed:
    reason = ("the same event_id was already accepted" if first_event_id == event["event_id"]
              else f"same dedup_key as event {first_event_id} within the dedup window")
    return Routed(make_decision(event, "DEDUPLICATED", now_ms, reason=reason))


def single_request(event: dict, channel: str, now_ms: int) -> dict:
    return {
        "delivery_id": delivery_id("SINGLE", channel, event["user_id"], [event["event_id"]]),
        "user_id": event["user_id"],
        "channel": channel,
        "kind": "SINGLE",
        "event_ids": [event["event_id"]],
        "type": event["type"],
        "priority": event["priority"],
        "title": event["title"],
        "body": event["body"],
        "data": event.get("data") or {},
        "created_at": to_ms(event["occurred_at"]),
    }


def make_decision(event: dict, outcome: str, now_ms: int, *, channels: list[str] | None = None,
                  delivery_id: str | None = None, reason: str, final: bool = True,
                  release_at: int | None = None) -> dict:
    """A ``herald.Decision``: ``final`` is False for an interim record (the event goes on at ``release_at``)."""
    return {"event_id": event["event_id"], "user_id": event["user_id"], "outcome": outcome,
            "channels": channels or [], "delivery_id": delivery_id, "reason": reason, "at": now_ms,
            "final": final, "release_at": release_at}
