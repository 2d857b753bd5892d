"""A user's notification preferences: defaults, the effective record, checks, and local-time helpers.

Preferences are plain dicts shaped like the Avro record ``herald.Preferences``. The rules:
- A user with no record (or a ``null`` tombstone on the compacted topic) has ``defaults(user_id)``.
- A record with missing keys takes the defaults for them; so does a ``None`` on a field that is not
  nullable in the schema (``timezone``, ``channels``, ``batching``, ...).
- A missing entry in ``channels`` or ``types`` means enabled.
- ``minimum_priority`` keeps an event whose priority ranks at or above it (CRITICAL > HIGH > NORMAL > LOW).
- ``validate`` (messages) and ``validate_fields`` (field -> problem) check a record: the API refuses an
  invalid PUT with them and the pipeline dead-letters an invalid record, keeping the previous one.
- Nothing here raises on a bad stored record all the same (an admin writing to the topic, a record
  from before a check existed): ``effective`` replaces every field that fails its check with the
  default (``channels``/``types`` keep their boolean entries, ``dnd`` its valid windows), and the
  accessors the policy reads (``zone``, ``batch_window_s``, ``max_batch_size``, ``max_per_hour``,
  ``allows_*``, ``meets_minimum``) read even a raw malformed dict leniently: an unknown zone is UTC,
  a malformed ``HH:MM`` is absent, an out-of-range number takes the default.
- Time zones are resolved in one place, ``zone()``.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents.validate import to_ms
from herald.enums import DIGEST_MODES, PRIORITIES, urgency

DEFAULT_BATCH_WINDOW_S = 30
DEFAULT_MAX_BATCH_SIZE = 50
BATCH_WINDOW_RANGE = (1, 86_400)
MAX_BATCH_SIZE_RANGE = (1, 1_000)
MAX_PER_HOUR_RANGE = (1, 100_000)
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
        "batch_window_s": DEFAULT_BATCH_WINDOW_S,
        "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
        "max_per_hour": None,
        "updated_at": 0,
    }


def effective(prefs: dict | None, user_id: str) -> dict:
    """``defaults(user_id)`` overlaid with the valid fields of ``prefs``, with ``updated_at`` as epoch ms.

    ``user_id`` is the topic key and wins over a ``user_id`` inside the record. A field that fails its
    check (see ``validate_fields``) keeps its default, except that ``channels`` and ``types`` keep their
    boolean entries and ``dnd`` its valid windows; never raises, whatever ``prefs`` holds (a non-dict
    is no preferences at all). Keys unknown to the schema are kept (the caller decides what to do with
    them). Maps and lists are copied, so the result may be changed without touching ``prefs``.
    """
    merged = defaults(user_id)
    if not isinstance(prefs, dict):
        return merged
    for key, value in prefs.items():
        if value is None and key not in _NULLABLE:
            continue
        check = _CHECKS.get(key)
        if check is not None and check(value) is not None:
            value = _salvage(key, value)
            if value is None:
                continue
        elif isinstance(value, (dict, list)):
            value = _copy(value)
        merged[key] = value
    merged["user_id"] = user_id
    merged["updated_at"] = to_ms(merged["updated_at"])
    return merged


def _salvage(key: str, value: object) -> object | None:
    """What is still usable of an invalid field: the boolean entries of a map, the valid DND windows."""
    if key in ("channels", "types") and isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, bool)}
    if key == "dnd" and isinstance(value, list):
        return [dict(w) for w in value if _check_window(w, ("day", "start", "end")) is None]
    return None


def allows_channel(prefs: dict | None, channel: str) -> bool:
    """False only when the user explicitly disabled ``channel`` (a malformed map disables nothing)."""
    flags = (prefs or {}).get("channels")
    return not isinstance(flags, dict) or flags.get(channel, True) is not False


def allows_type(prefs: dict | None, type_: str) -> bool:
    """False only when the user explicitly disabled the event type ``type_``."""
    flags = (prefs or {}).get("types")
    return not isinstance(flags, dict) or flags.get(type_, True) is not False


def meets_minimum(prefs: dict | None, priority: str) -> bool:
    """True when ``priority`` ranks at or above the user's ``minimum_priority`` (default LOW).

    An unknown ``priority`` raises ``ValueError`` (the decoder already checked the enum); an unknown
    or malformed stored minimum is read as LOW.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")
    minimum = (prefs or {}).get("minimum_priority")
    return minimum not in PRIORITIES or urgency(priority) >= urgency(minimum)  # type: ignore[arg-type]


def batch_window_s(prefs: dict | None) -> int:
    """The user's batch window in seconds; the default when absent or out of range."""
    return _bounded((prefs or {}).get("batch_window_s"), BATCH_WINDOW_RANGE, DEFAULT_BATCH_WINDOW_S)


def max_batch_size(prefs: dict | None) -> int:
    """How many events one batch request holds at most; the default when absent or out of range."""
    return _bounded((prefs or {}).get("max_batch_size"), MAX_BATCH_SIZE_RANGE, DEFAULT_MAX_BATCH_SIZE)


def max_per_hour(prefs: dict | None) -> int | None:
    """The user's own cap on deliveries an hour per channel; None (no cap of their own) when absent or invalid."""
    return _bounded((prefs or {}).get("max_per_hour"), MAX_PER_HOUR_RANGE, None)


def _bounded(value: object, bounds: tuple[int, int], default: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        return default
    return value


def validate(prefs: object, *, ignore_unknown: bool = False) -> list[str]:
    """Human-readable problems with a preferences document; empty means valid.

    Each message starts with the field's name ("max_batch_size must be a whole number from 1 to
    1000"), except an unknown key ("unknown key 'colour'"). See ``validate_fields`` for the rules.
    """
    return [problem if problem.startswith("unknown key") else f"{key} {problem}"
            for key, problem in validate_fields(prefs, ignore_unknown=ignore_unknown).items()]


def validate_fields(prefs: object, *, ignore_unknown: bool = False) -> dict[str, str]:
    """Each invalid field of a preferences document and its problem (e.g. ``{"timezone": "'Mars/Olympus'
    is not a known IANA time zone"}``); empty means valid. A document that is not an object is
    ``{"preferences": "must be a JSON object"}``; an unknown key ``{"colour": "unknown key 'colour'"}``.

    Only the keys present are checked (missing ones take defaults). ``None`` is accepted only on the
    schema's nullable fields. ``updated_at`` may be epoch ms or a ``datetime``. ``ignore_unknown``
    passes keys this code does not know: for a record decoded with a newer schema (the pipeline),
    not for a document a client sent (the API).
    """
    if not isinstance(prefs, dict):
        return {"preferences": "must be a JSON object"}
    problems = {}
    for key, value in prefs.items():
        check = _CHECKS.get(key)
        if check is None and ignore_unknown:
            continue
        problem = f"unknown key {key!r}" if check is None else check(value)
        if problem:
            problems[str(key)] = problem
    return problems


# Local time. Shared by quiet hours and digests so both read the record's clock the same way.

def zone(prefs: dict | None) -> ZoneInfo:
    """The record's IANA zone; UTC when absent, malformed or unknown (the one place zones are resolved)."""
    name = (prefs or {}).get("timezone")
    return (_known_zone(name) if isinstance(name, str) else None) or UTC


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


@lru_cache(maxsize=1_024)  # an unknown name would otherwise be looked for on disk at every event
def _known_zone(name: str) -> ZoneInfo | None:
    # The host's zoneinfo directory also holds names that are not portable zones: "localtime" is the
    # host's own zone, and "right/..." zones count leap seconds, which epoch milliseconds do not.
    if not isinstance(name, str) or not name or name in _HOST_ONLY or name.startswith(("posix/", "right/")):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
    except Exception:  # noqa: BLE001 - a stored name must never stop the pipeline, whatever zoneinfo makes of it
        return None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _check_zone(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be an IANA time zone name such as Europe/Berlin"
    if len(value) > 64:
        return "is not a known IANA time zone"
    return None if _known_zone(value) else f"{value!r} is not a known IANA time zone"


def _check_updated_at(value: object) -> str | None:
    return None if isinstance(value, datetime) else _check_int(value, 0, None)


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


_CHECKS: dict[str, Callable[[Any], str | None]] = {
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
    "batch_window_s": lambda v: _check_int(v, *BATCH_WINDOW_RANGE),
    "max_batch_size": lambda v: _check_int(v, *MAX_BATCH_SIZE_RANGE),
    "max_per_hour": lambda v: None if v is None else _check_int(v, *MAX_PER_HOUR_RANGE),
    "updated_at": _check_updated_at,
}
