"""Quiet hours and do-not-disturb: whether a user is quiet now, and until when.

The rule, in the record's local time zone:
- ``quiet_hours`` ``{start, end}`` recurs every day. ``dnd`` windows ``{day, start, end}`` recur on their
  weekday (Monday 0). A window is ``[start, end)``: the start minute is quiet, the end minute is not.
- ``start > end`` crosses midnight: it runs from ``start`` on its day to ``end`` on the next day (so a
  DND window on Sunday 22:00-02:00 ends Monday 02:00). ``start == end`` is no window at all.
- Windows that overlap or touch merge into one quiet period; ``quiet_until`` returns its end, so quiet
  hours 22:00-07:00 followed by DND Monday 07:00-09:00 end at 09:00 on Monday.
- DST: a bound in a spring-forward gap moves forward to the first valid instant (so a window inside
  the gap vanishes that day); an ambiguous bound takes its first occurrence (fold=0).
- Windows covering the whole week would never end: the answer is capped at ``now + 8 days``.
- Malformed windows (which ``preferences.validate`` rejects) are ignored; an unknown zone is UTC.
This module does not know priorities: the caller lets CRITICAL through regardless.
"""
from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from agents.preferences import local_ms, parse_hhmm, to_local, zone

CAP_MS = 8 * 24 * 3600 * 1000
QUIET = "quiet hours"
DND = "do not disturb"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Local dates searched around an instant: a window crossing midnight starts the day before, and the
# search must reach past the 8-day cap even across a DST change or a skipped date (Samoa, 2011).
_DAYS_BEFORE, _DAYS_AFTER = 2, 11

Period = tuple[int, int, str]


def quiet_until(prefs: dict, now_ms: int) -> int | None:
    """When the quiet period around ``now_ms`` ends (epoch ms, always > ``now_ms``); None when not quiet."""
    period = _period(prefs, now_ms)
    return None if period is None else min(period[1], now_ms + CAP_MS)


def describe(prefs: dict, until_ms: int, now_ms: int | None = None) -> str:
    """A short reason for a user, e.g. ``"quiet hours until 07:00 Europe/Berlin"``.

    Says ``"do not disturb"`` when the quiet period ends with a DND window (quiet hours win a tie).
    The local weekday is added when ``until_ms`` is not on the local date of ``now_ms``
    (``"until Mon 07:00 ..."``), and the date too when it is a week or more away. Without ``now_ms``,
    "today" is the local date on which the quiet period began.
    """
    tz = zone(prefs)
    period = _period(prefs, until_ms - 1)
    kind = period[2] if period else QUIET
    since = now_ms if now_ms is not None else (period[0] if period else until_ms - 1)
    end, today = to_local(tz, until_ms), to_local(tz, since).date()
    when = end.strftime("%H:%M")
    if (end.date() - today).days >= 7:
        when = f"{WEEKDAYS[end.weekday()]} {end.day} {MONTHS[end.month - 1]} {when}"
    elif end.date() != today:
        when = f"{WEEKDAYS[end.weekday()]} {when}"
    return f"{kind} until {when} {tz.key}"


def _period(prefs: dict, at_ms: int) -> Period | None:
    """The merged quiet period containing ``at_ms``: (start, end, kind of the window that ends it)."""
    rules = _rules(prefs)
    if not rules:
        return None
    tz = zone(prefs)
    for period in _merged(tz, rules, to_local(tz, at_ms).date()):
        if period[0] <= at_ms < period[1]:
            return period
    return None


def _rules(prefs: dict) -> tuple[tuple[int | None, int, int, str], ...]:
    """The user's windows as (weekday or None for every day, start minute, end minute, kind)."""
    rules: list[tuple[int | None, int, int, str]] = []
    quiet = prefs.get("quiet_hours")
    if isinstance(quiet, dict):
        rules += _rule(None, quiet.get("start"), quiet.get("end"), QUIET)
    dnd = prefs.get("dnd")
    for window in dnd if isinstance(dnd, list) else ():
        if isinstance(window, dict) and window.get("day") in range(7) and not isinstance(window.get("day"), bool):
            rules += _rule(window["day"], window.get("start"), window.get("end"), DND)
    return tuple(rules)


# Every event of a user with quiet hours asks this; the answer only changes with the local date, and
# users share a few zones and rule sets: building it is ~50 instants through zoneinfo, a lookup is not.
@lru_cache(maxsize=16_384)
def _merged(tz: ZoneInfo, rules: tuple, today: date) -> tuple[Period, ...]:
    """The quiet periods (windows merged where they overlap or touch) around the local date ``today``."""
    merged: list[list] = []
    for start, end, kind in sorted(_windows(rules, tz, today - timedelta(_DAYS_BEFORE), today + timedelta(_DAYS_AFTER))):
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            if end > last[1] or (end == last[1] and kind == QUIET):
                last[1], last[2] = end, kind
        else:
            merged.append([start, end, kind])
    return tuple((s, e, k) for s, e, k in merged)


def _windows(rules: tuple, tz: ZoneInfo, first: date, last: date) -> list[Period]:
    """Every non-empty window starting on a local date in ``[first, last]``, as epoch-ms intervals."""
    out: list[Period] = []
    day = first
    while day <= last:
        for weekday, start, end, kind in rules:
            if weekday is None or weekday == day.weekday():
                end_day = day if start < end else day + timedelta(1)
                interval = (local_ms(tz, day, start), local_ms(tz, end_day, end), kind)
                if interval[0] < interval[1]:  # a window inside a DST gap is empty
                    out.append(interval)
        day += timedelta(1)
    return out


def _rule(weekday: int | None, start: object, end: object, kind: str) -> list[tuple[int | None, int, int, str]]:
    s, e = parse_hhmm(start), parse_hhmm(end)
    return [] if s is None or e is None or s == e else [(weekday, s, e, kind)]
