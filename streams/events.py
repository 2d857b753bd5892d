"""Turning a producer's JSON line into a ``NotificationEvent`` record, with errors a person can act on."""
from __future__ import annotations

import time
import uuid
from datetime import datetime

REQUIRED = ("user_id", "type", "title", "body")
PRIORITIES = ("CRITICAL", "HIGH", "NORMAL", "LOW")
CHANNELS = ("EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET")
KNOWN = {"event_id", "user_id", "type", "priority", "title", "body", "data", "occurred_at", "dedup_key",
         "batchable", "channels", "deliver_after", "cancel_key"}


class EventError(ValueError):
    pass


def _millis(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise EventError(f"{name} must be milliseconds since the epoch or an ISO-8601 time")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    raise EventError(f"{name} must be milliseconds since the epoch or an ISO-8601 time, not {value!r}")


def from_json(obj: object, now_ms: int | None = None) -> dict:
    """A complete event from a JSON object: ``event_id`` defaults to a new UUID, ``priority`` to NORMAL,
    ``occurred_at`` to now; unknown fields and wrong types are errors, not silently dropped."""
    if not isinstance(obj, dict):
        raise EventError("each line must be a JSON object")
    unknown = set(obj) - KNOWN
    if unknown:
        raise EventError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN))}")
    missing = [f for f in REQUIRED if not obj.get(f)]
    if missing:
        raise EventError(f"missing {', '.join(missing)}")
    priority = str(obj.get("priority", "NORMAL")).upper()
    if priority not in PRIORITIES:
        raise EventError(f"priority must be one of {', '.join(PRIORITIES)}")
    channels = obj.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or any(str(c).upper() not in CHANNELS for c in channels):
            raise EventError(f"channels must be a list of {', '.join(CHANNELS)}")
        channels = [str(c).upper() for c in channels]
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise EventError("data must be an object of strings")
    for name in ("user_id", "type", "title", "body"):
        if not isinstance(obj[name], str):
            raise EventError(f"{name} must be a string")
    return {
        "event_id": str(obj.get("event_id") or uuid.uuid4()),
        "user_id": obj["user_id"],
        "type": obj["type"],
        "priority": priority,
        "title": obj["title"],
        "body": obj["body"],
        "data": {str(k): str(v) for k, v in data.items()},
        "occurred_at": _millis(obj.get("occurred_at"), "occurred_at") or now_ms or int(time.time() * 1000),
        "dedup_key": obj.get("dedup_key"),
        "batchable": bool(obj.get("batchable", True)),
        "channels": channels,
        "deliver_after": _millis(obj.get("deliver_after"), "deliver_after"),
        "cancel_key": obj.get("cancel_key"),
    }
