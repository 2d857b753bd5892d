from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.digest_period import label, period
from agents.preferences import local_ms

MIN = 60_000
H = 60 * MIN
DAY = 24 * H


def utc_ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def at(name: str, *args) -> int:
    y, mo, d, h, mi = (*args, 0)[:5]
    return local_ms(ZoneInfo(name), date(y, mo, d), h * 60 + mi)


def prefs(mode, tz="UTC", time=None, day=None):
    return {"timezone": tz, "digest_mode": mode, "digest_time": time, "digest_day": day}


def test_immediate_has_no_period_even_with_an_override():
    assert period(prefs("IMMEDIATE"), utc_ms(2026, 11, 23, 12, 0)) is None
    assert period({}, utc_ms(2026, 11, 23, 12, 0)) is None
    assert period(prefs("IMMEDIATE"), utc_ms(2026, 11, 23, 12, 0), period_override_s=10) is None


def test_hourly_utc_and_the_end_belongs_to_the_next_period():
    p = prefs("HOURLY")
    assert period(p, utc_ms(2026, 11, 23, 14, 30)) == (utc_ms(2026, 11, 23, 14, 0), utc_ms(2026, 11, 23, 15, 0))
    assert period(p, utc_ms(2026, 11, 23, 14, 0)) == (utc_ms(2026, 11, 23, 14, 0), utc_ms(2026, 11, 23, 15, 0))
    assert period(p, utc_ms(2026, 11, 23, 15, 0) - 1)[1] == utc_ms(2026, 11, 23, 15, 0)
    assert period(p, utc_ms(2026, 11, 23, 15, 0))[0] == utc_ms(2026, 11, 23, 15, 0)


def test_hourly_kolkata_aligns_to_local_hours():
    p = prefs("HOURLY", "Asia/Kolkata")
    assert period(p, utc_ms(2026, 11, 23, 14, 0)) == (utc_ms(2026, 11, 23, 13, 30), utc_ms(2026, 11, 23, 14, 30))
    assert label(p, period(p, utc_ms(2026, 11, 23, 14, 0))) == "hourly digest 19:00–20:00"


def hourly_periods_of(p, first_ms, last_ms):
    out, t = [], first_ms
    while t < last_ms:
        out.append(period(p, t))
        t = out[-1][1]
    return out


def test_hourly_berlin_spring_forward_day_has_23_one_hour_periods():
    p = prefs("HOURLY", "Europe/Berlin")
    periods = hourly_periods_of(p, at("Europe/Berlin", 2026, 3, 29, 0), at("Europe/Berlin", 2026, 3, 30, 0))
    assert len(periods) == 23 and all(e - s == H for s, e in periods)
    assert label(p, periods[1]) == "hourly digest 01:00–03:00"


def test_hourly_berlin_fall_back_repeats_the_hour_as_its_own_period():
    p = prefs("HOURLY", "Europe/Berlin")
    periods = hourly_periods_of(p, at("Europe/Berlin", 2026, 10, 25, 0), at("Europe/Berlin", 2026, 10, 26, 0))
    assert len(periods) == 25 and all(e - s == H for s, e in periods)
    assert [label(p, x) for x in periods[1:4]] == [
        "hourly digest 01:00 CEST–02:00 CEST",
        "hourly digest 02:00 CEST–02:00 CET",
        "hourly digest 02:00 CET–03:00 CET",
    ]


def test_daily_defaults_to_nine_local():
    p = prefs("DAILY", "Europe/Berlin")
    nine = at("Europe/Berlin", 2026, 11, 23, 9)
    assert period(p, nine) == (nine, nine + DAY)
    assert period(p, nine - 1) == (nine - DAY, nine)
    assert period(p, nine + 5 * H) == (nine, nine + DAY)
    assert label(p, period(p, nine + 5 * H)) == "daily digest for Mon 23 Nov"


def test_daily_digest_time_new_york():
    p = prefs("DAILY", "America/New_York", "18:30")
    start = at("America/New_York", 2026, 11, 23, 18, 30)
    assert start == utc_ms(2026, 11, 23, 23, 30)
    assert period(p, start + H) == (start, start + DAY)


def test_daily_berlin_dst_days_are_23_and_25_hours():
    p = prefs("DAILY", "Europe/Berlin")
    spring = period(p, at("Europe/Berlin", 2026, 3, 28, 12))
    assert spring[1] - spring[0] == 23 * H
    autumn = period(p, at("Europe/Berlin", 2026, 10, 24, 12))
    assert autumn[1] - autumn[0] == 25 * H


def test_daily_digest_time_in_the_gap_moves_forward_and_a_repeated_one_takes_the_first():
    p = prefs("DAILY", "Europe/Berlin", "02:30")
    spring = period(p, utc_ms(2026, 3, 29, 1, 0))
    assert spring[0] == utc_ms(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert period(p, spring[0] - 1)[1] == spring[0]
    autumn = period(p, utc_ms(2026, 10, 25, 1, 0))
    assert autumn[0] == utc_ms(2026, 10, 25, 0, 30)  # 02:30 CEST, not 02:30 CET
    assert autumn[1] - autumn[0] == DAY + H


def test_weekly_defaults_to_monday_nine():
    p = prefs("WEEKLY", "Europe/Berlin")
    monday = at("Europe/Berlin", 2026, 11, 23, 9)
    assert period(p, at("Europe/Berlin", 2026, 11, 27, 12)) == (monday, monday + 7 * DAY)
    assert period(p, monday - 1) == (monday - 7 * DAY, monday)
    assert label(p, (monday, monday + 7 * DAY)) == "weekly digest for the week of 23 Nov"


def test_weekly_on_friday_evening_new_york_across_fall_back():
    p = prefs("WEEKLY", "America/New_York", "18:00", 4)
    start = at("America/New_York", 2026, 10, 30, 18)
    assert period(p, at("America/New_York", 2026, 11, 2, 12)) == (start, start + 7 * DAY + H)


def test_malformed_time_and_day_take_the_defaults():
    p = prefs("WEEKLY", "Europe/Berlin", "9am", 8)
    monday = at("Europe/Berlin", 2026, 11, 23, 9)
    assert period(p, monday) == (monday, monday + 7 * DAY)


def test_an_override_gives_fixed_epoch_aligned_periods_in_every_mode():
    t = utc_ms(2026, 11, 23, 14, 0) + 12_345
    for mode in ("HOURLY", "DAILY", "WEEKLY"):
        p = prefs(mode, "Asia/Kolkata")
        assert period(p, t, period_override_s=10) == (t - 2_345, t - 2_345 + 10_000)
        assert period(p, t - 2_345 + 10_000, period_override_s=10)[0] == t - 2_345 + 10_000
    p = prefs("DAILY", "Asia/Kolkata")
    assert label(p, period(p, t, 10)) == "digest Mon 23 Nov 19:30:10–19:30:20"


def test_an_override_must_be_positive():
    with pytest.raises(ValueError):
        period(prefs("DAILY"), 0, period_override_s=0)


# Properties.

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
TRANSITIONS = [
    utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 10, 25, 1, 0),
    utc_ms(2026, 3, 8, 7, 0), utc_ms(2026, 11, 1, 6, 0),
    utc_ms(2026, 4, 4, 15, 0), utc_ms(2026, 10, 3, 15, 30),
]
instants = st.one_of(
    st.integers(utc_ms(2025, 1, 1, 0, 0), utc_ms(2028, 12, 31, 0, 0)),
    st.sampled_from(TRANSITIONS).flatmap(lambda t: st.integers(t - 8 * DAY, t + 8 * DAY)),
)
hhmm = st.one_of(st.integers(0, 24 * 60 - 1), st.sampled_from([0, 120, 150, 180])).map(
    lambda m: f"{m // 60:02d}:{m % 60:02d}"
)
any_prefs = st.builds(
    prefs,
    st.sampled_from(["HOURLY", "DAILY", "WEEKLY"]),
    st.sampled_from(ZONES),
    st.none() | hhmm,
    st.none() | st.integers(0, 6),
)
overrides = st.none() | st.integers(1, 3 * 86_400)


@given(any_prefs, instants, overrides)
def test_periods_contain_the_instant_and_tile(p, t, override):
    start, end = period(p, t, override)
    assert start <= t < end
    assert period(p, start, override) == (start, end)
    assert period(p, end, override)[0] == end
    assert period(p, start - 1, override)[1] == start


@given(any_prefs, instants)
def test_period_lengths_stay_near_nominal(p, t):
    start, end = period(p, t)
    nominal = {"HOURLY": H, "DAILY": DAY, "WEEKLY": 7 * DAY}[p["digest_mode"]]
    # DST moves a bound by at most an hour; a bound in a gap shortens one period by up to the gap.
    assert nominal - 2 * H <= end - start <= nominal + H
    if p["timezone"] in ("UTC", "Asia/Kolkata"):
        assert end - start == nominal


@given(any_prefs, instants)
def test_every_period_has_a_label(p, t):
    text = label(p, period(p, t))
    assert text.startswith(p["digest_mode"].lower() + " digest")
