"""Ingest validation: whether a decoded ``NotificationEvent`` may enter the pipeline.

The rule: ids are non-empty and bounded, the key names the same user as the record, the text and the
``data`` map are bounded, and timestamps are plausible (not before 2000, not more than a day ahead
of the clock for ``occurred_at``, not more than a year ahead for ``deliver_after``). No text field
holds a control character (Unicode category Cc: U+0000-U+001F and U+007F-U+009F, e.g. NUL, ESC, DEL):
PostgreSQL refuses NUL in text and the others corrupt logs and terminals; only ``body`` may hold line
breaks and tabs (``\n``, ``\t``). The message names the field, never its content. A ``CANCEL``
event must say what it cancels. Enum symbols were already checked by the decoder. Every failure is
a ``ValidationError`` with the contract's ``VALIDATION`` reason, and the record is dead-lettered.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

MAX_ID = 256
MAX_TYPE = 64
MAX_TITLE = 1_000
MAX_BODY = 10_000
MAX_DATA_ENTRIES = 100
MAX_DATA_KEY = 256
MAX_DATA_VALUE = 8_192
EARLIEST_MS = int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
FUTURE_SKEW_MS = 24 * 3600 * 1000
MAX_SCHEDULE_AHEAD_MS = 366 * 24 * 3600 * 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc
_CONTROL_IN_BODY = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Cc except \t (09) and \n (0a)
_PLAIN_FIELDS = ("event_id", "user_id", "type", "title", "dedup_key", "cancel_key")


@dataclass(frozen=True)
class ValidationError(ValueError):
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def to_ms(value) -> int:
    """Milliseconds since the epoch from fastavro's ``datetime`` (timestamp-millis) or an int."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _fail(message: str) -> ValidationError:
    return ValidationError("VALIDATION", message)


def validate_event(event: dict, key: bytes | None, now_ms: int) -> None:
    """Raise ``ValidationError`` if ``event`` (decoded) with record ``key`` must not enter the pipeline."""
    for name in ("event_id", "user_id"):
        value = event.get(name) or ""
        if not value.strip():
            raise _fail(f"{name} is missing or empty")
        if len(value) > MAX_ID:
            raise _fail(f"{name} is {len(value)} characters, over the limit of {MAX_ID}")
    if key is not None:
        try:
            text_key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("the record key is not valid UTF-8") from None
        if text_key != event["user_id"]:
            raise _fail("the record key does not match user_id (key by user_id so a user's events stay in order)")
    if not event.get("type") or len(event["type"]) > MAX_TYPE:
        raise _fail(f"type must be 1 to {MAX_TYPE} characters")
    if len(event.get("title", "")) > MAX_TITLE:
        raise _fail(f"title is over {MAX_TITLE} characters")
    if len(event.get("body", "")) > MAX_BODY:
        raise _fail(f"body is over {MAX_BODY} characters")
    data = event.get("data") or {}
    if len(data) > MAX_DATA_ENTRIES:
        raise _fail(f"data has {len(data)} entries, over the limit of {MAX_DATA_ENTRIES}")
    for k, v in data.items():
        if len(k) > MAX_DATA_KEY or len(v) > MAX_DATA_VALUE:
            raise _fail(f"data entry {k[:40]!r} is over the size limit ({MAX_DATA_KEY} key, {MAX_DATA_VALUE} value characters)")
    _check_control(event, data)
    occurred = to_ms(event["occurred_at"])
    if occurred < EARLIEST_MS:
        raise _fail("occurred_at is before 2000-01-01: is it in seconds rather than milliseconds?")
    if occurred > now_ms + FUTURE_SKEW_MS:
        raise _fail("occurred_at is more than a day in the future")
    deliver_after = event.get("deliver_after")
    if deliver_after is not None:
        at = to_ms(deliver_after)
        if at < EARLIEST_MS or at > now_ms + MAX_SCHEDULE_AHEAD_MS:
            raise _fail("deliver_after is before 2000 or more than a year ahead")
    if event["type"] == "CANCEL" and not event.get("cancel_key"):
        raise _fail("a CANCEL event needs a cancel_key")


def _check_control(event: dict, data: dict) -> None:
    """Refuse a control character in any text field (``body`` may hold ``\\n`` and ``\\t``)."""
    for name in _PLAIN_FIELDS:
        value = event.get(name)
        if isinstance(value, str) and _CONTROL.search(value):
            raise _fail(f"{name} contains a control character")
    body = event.get("body")
    if isinstance(body, str) and _CONTROL_IN_BODY.search(body):
        raise _fail("body contains a control character other than a line break or a tab")
    for i, (k, v) in enumerate(data.items()):
        if _CONTROL.search(k):
            raise _fail(f"data key #{i + 1} contains a control character")
        if isinstance(v, str) and _CONTROL.search(v):
            raise _fail(f"data value of key {k[:40]!r} contains a control character")
