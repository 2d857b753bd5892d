"""A user's notification preferences: defaults, the effective record, checks, and local-time helpers.

Preferences are plain dicts shaped like the Avro record ``herald.Preferences``. The rules:
- A user with no record (or a ``null`` tombstone on the compacted topic) has ``defaults(user_id)``.
- A record with missing keys takes the defaults for them; so does a ``None`` on a field that is not
  nullable in the schema (``timezone``, ``channels``, ``batching``, ...).
- A missing entry in ``channels`` or ``types`` means enabled.
- ``minimum_priority`` keeps an event whose priority ranks at or above it (CRITICAL > HIGH > NORMAL > LOW).
- ``validate`` is for the API's PUT; the pipeline never rejects a stored record. A malformed value that
  reaches the pipeline anyway (an admin writing to the topic) is read leniently by the helpers here:
  an unknown zone is UTC and a malformed ``HH:MM`` is treated as absent.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents.validate import to_ms

PRIORITIES = ("CRITICAL", "HIGH", "NORMAL", "LOW")
DIGEST_MODES = ("IMMEDIATE", "HOURLY", "DAILY", "WEEKLY")
_RANK = {p: len(PRIORITIES) - i for i, p in enumerate(PRIORITIES)}
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_NULLABLE = frozenset({"quiet_hours", "digest_time", "digest_day", "max_per_hour"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HOST_ONLY = frozenset({"localtime", "posixrules"})
UTC = ZoneInfo("UTC")


def defaults(user_id: str) -> dict:
    """The full record of a user who never set a preference: everything on, nothing held back."""
    return {
        "user_id": user_id,
        "timezone": "UTC",
        "channels": {},
        "types": {},
        "minimum_priority": "LOW",
        "quiet_hours": None,
        "dnd": [],
        "digest_mode": "IMMEDIATE",
        "digest_time": None,
        "digest_day": None,
        "batching": True,
        "batch_window_s": 30,
        "max_batch_size": 50,
        "max_per_hour": None,
        "updated_at": 0,
    }


def effective(prefs: dict | None, user_id: str) -> dict:
    """``defaults(user_id)`` overlaid with ``prefs``, with ``updated_at`` as epoch ms.

    ``user_id`` is the topic key and wins over a ``user_id`` inside the record. Keys unknown to the
    schema are kept (the caller decides what to do with them). Maps and lists are copied, so the
    result may be changed without touching ``prefs``.
    """
    merged = defaults(user_id)
    for key, value in (prefs or {}).items():
        if value is None and key not in _NULLABLE:
            continue
        if isinstance(value, (dict, list)):
            value = _copy(value)
        merged[key] = value
    merged["user_id"] = user_id
    merged["updated_at"] = to_ms(merged["updated_at"])
    return merged


def allows_channel(prefs: dict | None, channel: str) -> bool:
    """False only when the user explicitly disabled ``channel``."""
    return bool(((prefs or {}).get("channels") or {}).get(channel, True))


def allows_type(prefs: dict | None, type_: str) -> bool:
    """False only when the user explicitly disabled the event type ``type_``."""
    return bool(((prefs or {}).get("types") or {}).get(type_, True))


def meets_minimum(prefs: dict | None, priority: str) -> bool:
    """True when ``priority`` ranks at or above the user's ``minimum_priority`` (default LOW).

    An unknown ``priority`` raises ``ValueError`` (the decoder already checked the enum); an unknown
    stored minimum is read as LOW.
    """
    if priority not in _RANK:
        raise ValueError(f"unknown priority {priority!r}")
    minimum = (prefs or {}).get("minimum_priority") or "LOW"
    return _RANK[priority] >= _RANK.get(minimum, _RANK["LOW"])


def validate(prefs: dict) -> list[str]:
    """Human-readable problems with a preferences document (as PUT to the API); empty means valid.

    Only the keys present are checked (missing ones take defaults). ``None`` is accepted only on the
    schema's nullable fields. ``updated_at`` may be epoch ms or a ``datetime``.
    """
    if not isinstance(prefs, dict):
        return ["preferences must be a JSON object"]
    known = defaults("")
    problems = [f"unknown key {key!r}" for key in prefs if key not in known]
    checks = {
        "user_id": lambda v: None if isinstance(v, str) and v.strip() else "must be a non-empty string",
        "timezone": _check_zone,
        "channels": _check_flags,
        "types": _check_flags,
        "minimum_priority": lambda v: _check_symbol(v, PRIORITIES),
        "quiet_hours": lambda v: None if v is None else _check_window(v, ("start", "end")),
        "dnd": _check_dnd,
        "digest_mode": lambda v: _check_symbol(v, DIGEST_MODES),
        "digest_time": lambda v: None if v is None else _check_hhmm(v),
        "digest_day": lambda v: None if v is None else _check_int(v, 0, 6),
        "batching": lambda v: None if isinstance(v, bool) else "must be true or false",
        "batch_window_s": lambda v: _check_int(v, 1, 86_400),
        "max_batch_size": lambda v: _check_int(v, 1, 1_000),
        "max_per_hour": lambda v: None if v is None else _check_int(v, 1, 100_000),
        "updated_at": lambda v: None if isinstance(v, datetime) else _check_int(v, 0, None),
    }
    for key, check in checks.items():
        if key in prefs:
            problem = check(prefs[key])
            if problem:
                problems.append(f"{key} {problem}")
    return problems


# Local time. Shared by quiet hours and digests so both read the record's clock the same way.

def zone(prefs: dict | None) -> ZoneInfo:
    """The record's IANA zone; UTC when absent or unknown."""
    return _known_zone((prefs or {}).get("timezone")) or UTC


def parse_hhmm(value: object) -> int | None:
    """Minutes after local midnight for ``"HH:MM"`` (00:00-23:59); None when absent or malformed."""
    match = _HHMM.match(value) if isinstance(value, str) else None
    return int(match[1]) * 60 + int(match[2]) if match else None


def to_local(tz: ZoneInfo, at_ms: int) -> datetime:
    """The aware local datetime of the instant ``at_ms`` (fold set on the repeated hour)."""
    return (_EPOCH + timedelta(milliseconds=at_ms)).astimezone(tz)


def local_ms(tz: ZoneInfo, day: date, minute: int, fold: int = 0) -> int:
    """The instant of local wall time ``day`` + ``minute`` minutes.

    A wall time in a spring-forward gap moves forward to the first valid instant (the transition);
    an ambiguous one takes occurrence ``fold`` (0 = the first). The map is non-decreasing in wall time.
    """
    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz)
    first, second = _ms(wall), _ms(wall.replace(fold=1))
    if first <= second:  # a real wall time: unique, or repeated and ``fold`` picks the occurrence
        return second if fold else first
    # In a gap fold=0 applies the earlier offset and fold=1 the later one, so the transition is in (second, first].
    after = to_local(tz, first).utcoffset()
    lo, hi = second, first
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if to_local(tz, mid).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi


def _ms(dt: datetime) -> int:
    return (dt.astimezone(timezone.utc) - _EPOCH) // timedelta(milliseconds=1)


def _known_zone(name: object) -> ZoneInfo | None:
    # The host's zoneinfo directory also holds names that are not portable zones: "localtime" is the
    # host's own zone, and "right/..." zones count leap seconds, which epoch milliseconds do not.
    if not isinstance(name, str) or not name or name in _HOST_ONLY or name.startswith(("posix/", "right/")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _check_zone(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be an IANA time zone name such as Europe/Berlin"
    return None if _known_zone(value) else f"{value!r} is not a known IANA time zone"


def _check_flags(value: object) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, bool) for k, v in value.items()):
        return "must map names to true or false"
    return None


def _check_symbol(value: object, symbols: tuple[str, ...]) -> str | None:
    return None if value in symbols else f"must be one of {', '.join(symbols)}"


def _check_hhmm(value: object) -> str | None:
    return None if parse_hhmm(value) is not None else f"{value!r} is not a local time HH:MM between 00:00 and 23:59"


def _check_int(value: object, low: int, high: int | None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        return f"must be a whole number from {low}" + (f" to {high}" if high is not None else " up")
    return None


def _check_window(value: object, keys: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict):
        return "must be an object with " + " and ".join(keys)
    extra = sorted(set(value) - set(keys))
    if extra:
        return f"has unknown keys {', '.join(extra)}"
    for key in keys:
        if key not in value:
            return f"is missing {key}"
        problem = _check_int(value[key], 0, 6) if key == "day" else _check_hhmm(value[key])
        if problem:
            return f"{key} {problem}"
    return None


def _check_dnd(value: object) -> str | None:
    if not isinstance(value, list):
        return "must be a list of {day, start, end}"
    for i, window in enumerate(value):
        problem = _check_window(window, ("day", "start", "end"))
        if problem:
            return f"[{i}] {problem}"
    return None
