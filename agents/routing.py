"""Which channels an event goes to, from its priority, the user's presence and preferences.

The rule:
- An event's explicit ``channels`` win over the rules below. They choose only the channels: when each
  part goes (at once, in a batch, in the digest, after quiet hours or a rate limit) is the policy's
  rule as for any other event.
- CRITICAL or HIGH, user offline: PUSH, SMS and EMAIL. User online: WEBSOCKET and PUSH.
- NORMAL, user online: WEBSOCKET. NORMAL, user offline: PUSH and EMAIL (batched where batching is on).
- LOW: EMAIL, by way of the digest.
- Every notification is also kept in-app (INAPP), unless the user disabled in-app.
- A channel the user disabled is dropped, except for CRITICAL, which overrides preferences.
"""
from __future__ import annotations

from typing import Any, Mapping

from agents.preferences import allows_channel
from herald.enums import urgency

# The order an event's channels are listed in (its decision, its requests): every channel, in-app first.
ORDER = ("INAPP", "WEBSOCKET", "PUSH", "SMS", "EMAIL")


def channels(event: Mapping[str, Any], prefs: dict, online: bool) -> list[str]:
    """The channels for ``event``, in a stable order; empty when the user disabled every one of them."""
    priority = event["priority"]
    if event.get("channels"):
        wanted = set(event["channels"])
    else:
        wanted = {"INAPP"}
        if urgency(priority) >= urgency("HIGH"):
            wanted |= {"WEBSOCKET", "PUSH"} if online else {"PUSH", "SMS", "EMAIL"}
        elif priority == "NORMAL":
            wanted |= {"WEBSOCKET"} if online else {"PUSH", "EMAIL"}
        else:
            wanted |= {"EMAIL"}
    if priority != "CRITICAL":
        wanted = {c for c in wanted if allows_channel(prefs, c)}
    return [c for c in ORDER if c in wanted]
