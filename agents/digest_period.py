"""Digest periods: which digest a held notification belongs to, and what to call it.

A period is ``[start_ms, end_ms)``. Periods tile time: the end of one is the start of the next, and an
instant equal to an end belongs to the next period. The rule, in the record's local time zone:
- IMMEDIATE (or an unknown mode): no digest, ``None``.
- HOURLY: local clock hours, so Asia/Kolkata (+05:30) periods start at local :00, i.e. UTC :30. On a
  fall-back day the repeated hour is a period of its own (the day has 25 hourly periods).
- DAILY: from one local ``digest_time`` (default 09:00) to the next. DST days make it 23 or 25 hours.
- WEEKLY: from local ``digest_day`` (default 0, Monday) at ``digest_time`` to the same a week later.
- A bound in a spring-forward gap moves forward to the first valid instant; an ambiguous one takes
  its first occurrence. A malformed ``digest_time``/``digest_day`` takes the default; an unknown zone is UTC.
- ``period_override_s`` (tests and demos) replaces every non-IMMEDIATE mode with fixed periods of that
  many seconds aligned to the epoch, whatever the zone.
"""
from __future__ import annotations

from bisect import bisect_right
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Sequence, cast
from zoneinfo import ZoneInfo

from agents.preferences import local_ms, parse_hhmm, to_local, zone
from agents.quiet_hours import MONTHS, WEEKDAYS

DEFAULT_TIME = 9 * 60
DEFAULT_DAY = 0
MODES = ("HOURLY", "DAILY", "WEEKLY")


def period(prefs: dict, at_ms: int, period_override_s: int | None = None) -> tuple[int, int] | None:
    """The digest period ``(start_ms, end_ms)`` with ``start_ms <= at_ms < end_ms``; None for IMMEDIATE.

    Raises ``ValueError`` for a ``period_override_s`` that is not a positive number of seconds.
    """
    mode = prefs.get("digest_mode")
    if mode not in MODES:
        return None
    if period_override_s is not None:
        if period_override_s <= 0:
            raise ValueError(f"period_override_s must be positive, not {period_override_s}")
        length = period_override_s * 1000
        start = at_ms - at_ms % length
        return start, start + length
    return _period(*_rule(prefs), at_ms)


def _rule(prefs: dict) -> tuple[str | None, ZoneInfo, str | None, int]:
    """What of ``prefs`` decides its periods: mode (None: none of ``MODES``), zone, ``digest_time`` and
    ``digest_day`` (malformed: None and the default day), all hashable."""
    weekday = prefs.get("digest_day")
    if isinstance(weekday, bool) or weekday not in range(7):
        weekday = DEFAULT_DAY
    digest_time = prefs.get("digest_time")
    if not isinstance(digest_time, str):  # a malformed stored value (unhashable, too) takes the default
        digest_time = None
    mode = prefs.get("digest_mode")
    return mode if mode in MODES else None, zone(prefs), digest_time, cast(int, weekday)


def _period(mode: str | None, tz: ZoneInfo, digest_time: str | None, weekday: int, at_ms: int) -> tuple[int, int]:
    bounds = _boundaries(mode, tz, digest_time, weekday, to_local(tz, at_ms).date())
    i = bisect_right(bounds, at_ms)
    return bounds[i - 1], bounds[i]


def label(prefs: dict, period_: tuple[int, int]) -> str:
    """A local-time title: ``"hourly digest 14:00–15:00"``, ``"daily digest for Mon 23 Nov"``,
    ``"weekly digest for the week of 23 Nov"`` (dates are those of the period's start).

    A period that is not one of the record's own (an override, or a mode that has none) is described
    by its local bounds with seconds, e.g. ``"digest Mon 23 Nov 14:00:05–14:00:15"``.
    """
    return _label(*_rule(prefs), *period_)


@lru_cache(maxsize=4096)
def _label(mode: str | None, tz: ZoneInfo, digest_time: str | None, weekday: int, start: int, end: int) -> str:
    """``label`` of one rule and period: the users of a zone and mode share one, so it is made once."""
    s, e = to_local(tz, start), to_local(tz, end)
    if mode in MODES and _period(mode, tz, digest_time, weekday, start) == (start, end):
        if mode == "HOURLY":
            # On the repeated hour 02:00-02:00 means nothing without the zone's abbreviations.
            tagged = _ambiguous(s) or _ambiguous(e)
            return f"hourly digest {_hm(s, tagged)}–{_hm(e, tagged)}"
        if mode == "DAILY":
            return f"daily digest for {_date(s)}"
        return f"weekly digest for the week of {s.day} {MONTHS[s.month - 1]}"
    until = e.strftime("%H:%M:%S") if e.date() == s.date() else f"{_date(e)} {e:%H:%M:%S}"
    return f"digest {_date(s)} {s:%H:%M:%S}–{until}"


@lru_cache(maxsize=4096)
def _boundaries(mode: str, tz: ZoneInfo, digest_time: str | None, weekday: int, today: date) -> list[int]:
    """Sorted period starts near ``today``, enough for one on each side of any instant of that date.

    They depend only on the date they fall on, never on the instant asked about, which is what makes
    periods computed from different instants tile (and lets them be cached per date).
    """
    minutes: Sequence[int]
    folds: Sequence[int]
    if mode == "HOURLY":
        days, minutes, folds = range(-1, 2), range(0, 24 * 60, 60), (0, 1)
    else:
        minute = parse_hhmm(digest_time)
        minutes, folds = (DEFAULT_TIME if minute is None else minute,), (0,)
        days = range(-2, 3) if mode == "DAILY" else range(-8, 9)
    found: set[int] = set()
    for offset in days:
        day = today + timedelta(offset)
        if mode != "WEEKLY" or day.weekday() == weekday:
            found.update(local_ms(tz, day, m, fold) for m in minutes for fold in folds)
    return sorted(found)


def _ambiguous(dt: datetime) -> bool:
    return dt.replace(fold=1 - dt.fold).utcoffset() != dt.utcoffset()


def _hm(dt: datetime, tagged: bool) -> str:
    return f"{dt:%H:%M} {dt.tzname()}" if tagged else f"{dt:%H:%M}"


def _date(dt: datetime) -> str:
    return f"{WEEKDAYS[dt.weekday()]} {dt.day} {MONTHS[dt.month - 1]}"
