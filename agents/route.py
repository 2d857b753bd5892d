"""The records a decision is written as: one event's SINGLE delivery request on a channel, and a Decision.

Which channels an event goes to is ``agents/routing.py``'s rule; when, ``agents/policy.py``'s.
"""
from __future__ import annotations

from typing import Any, Mapping

from agents.ids import delivery_id
from agents.types import Decision, DeliveryRequest
from agents.validate import to_ms


def single_request(event: Mapping[str, Any], channel: str, now_ms: int) -> DeliveryRequest:
    """The SINGLE request of one event on ``channel``; its ``delivery_id`` names only the event and channel."""
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


def make_decision(event: Mapping[str, Any], outcome: str, now_ms: int, *, channels: list[str] | None = None,
                  delivery_id: str | None = None, reason: str, final: bool = True,
                  release_at: int | None = None) -> Decision:
    """A ``herald.Decision``: ``final`` is False for an interim record (the event goes on at ``release_at``)."""
    return {"event_id": event["event_id"], "user_id": event["user_id"], "outcome": outcome,
            "channels": channels or [], "delivery_id": delivery_id, "reason": reason, "at": now_ms,
            "final": final, "release_at": release_at}
