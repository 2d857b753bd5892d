from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from hypothesis import assume, given
from hypothesis import strategies as st

from agents.preferences import local_ms, to_local
from agents.quiet_hours import CAP_MS, describe, quiet_until

MIN = 60_000
H = 60 * MIN


def utc_ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def at(name: str, *args) -> int:
    """The instant of a local wall time (first occurrence when repeated)."""
    y, mo, d, h, mi = (*args, 0)[:5]
    return local_ms(ZoneInfo(name), date(y, mo, d), h * 60 + mi)


def prefs(tz="UTC", quiet=None, dnd=()):
    return {
        "timezone": tz,
        "quiet_hours": None if quiet is None else {"start": quiet[0], "end": quiet[1]},
        "dnd": [{"day": day, "start": s, "end": e} for day, s, e in dnd],
    }


# 2026-11-23 is a Monday.

def test_no_windows_is_never_quiet():
    assert quiet_until({}, utc_ms(2026, 11, 23, 3, 0)) is None
    assert quiet_until(prefs(), utc_ms(2026, 11, 23, 3, 0)) is None


def test_quiet_hours_across_midnight_utc():
    p = prefs(quiet=("22:00", "07:00"))
    assert quiet_until(p, utc_ms(2026, 11, 23, 21, 59)) is None
    assert quiet_until(p, utc_ms(2026, 11, 23, 22, 0)) == utc_ms(2026, 11, 24, 7, 0)
    assert quiet_until(p, utc_ms(2026, 11, 23, 23, 30)) == utc_ms(2026, 11, 24, 7, 0)
    assert quiet_until(p, utc_ms(2026, 11, 24, 3, 0)) == utc_ms(2026, 11, 24, 7, 0)
    assert quiet_until(p, utc_ms(2026, 11, 24, 7, 0) - 1) == utc_ms(2026, 11, 24, 7, 0)
    assert quiet_until(p, utc_ms(2026, 11, 24, 7, 0)) is None


def test_quiet_hours_within_a_day():
    p = prefs(quiet=("13:00", "15:00"))
    assert quiet_until(p, utc_ms(2026, 11, 23, 12, 59)) is None
    assert quiet_until(p, utc_ms(2026, 11, 23, 14, 0)) == utc_ms(2026, 11, 23, 15, 0)
    assert quiet_until(p, utc_ms(2026, 11, 23, 15, 0)) is None


def test_start_equal_to_end_is_no_window():
    p = prefs(quiet=("07:00", "07:00"), dnd=[(0, "09:00", "09:00")])
    for hour in range(24):
        assert quiet_until(p, utc_ms(2026, 11, 23, hour, 0)) is None


def test_quiet_hours_run_into_a_touching_dnd_window_berlin():
    p = prefs("Europe/Berlin", quiet=("22:00", "07:00"), dnd=[(0, "07:00", "09:00")])
    monday_9 = at("Europe/Berlin", 2026, 11, 23, 9)
    assert quiet_until(p, at("Europe/Berlin", 2026, 11, 22, 23)) == monday_9  # Sunday night
    assert quiet_until(p, at("Europe/Berlin", 2026, 11, 23, 8)) == monday_9
    # Tuesday has no DND: quiet hours end at 07:00.
    assert quiet_until(p, at("Europe/Berlin", 2026, 11, 24, 3)) == at("Europe/Berlin", 2026, 11, 24, 7)
    assert quiet_until(p, monday_9) is None


def test_overlapping_windows_merge_to_the_latest_end():
    p = prefs(quiet=("22:00", "07:00"), dnd=[(0, "06:00", "08:00"), (0, "08:00", "08:30"), (0, "08:31", "10:00")])
    assert quiet_until(p, utc_ms(2026, 11, 22, 23, 0)) == utc_ms(2026, 11, 23, 8, 30)
    assert quiet_until(p, utc_ms(2026, 11, 23, 8, 30)) is None
    assert quiet_until(p, utc_ms(2026, 11, 23, 9, 0)) == utc_ms(2026, 11, 23, 10, 0)


def test_a_dnd_window_crossing_midnight_runs_into_the_next_day():
    p = prefs(dnd=[(6, "22:00", "02:00")])  # Sunday 22:00 to Monday 02:00
    assert quiet_until(p, utc_ms(2026, 11, 22, 21, 59)) is None
    assert quiet_until(p, utc_ms(2026, 11, 22, 23, 0)) == utc_ms(2026, 11, 23, 2, 0)
    assert quiet_until(p, utc_ms(2026, 11, 23, 1, 0)) == utc_ms(2026, 11, 23, 2, 0)
    # It does not start again on Monday night.
    assert quiet_until(p, utc_ms(2026, 11, 23, 23, 0)) is None


def test_dnd_applies_only_on_its_weekday():
    p = prefs(dnd=[(2, "09:00", "17:00")])  # Wednesday
    assert quiet_until(p, utc_ms(2026, 11, 25, 12, 0)) == utc_ms(2026, 11, 25, 17, 0)
    assert quiet_until(p, utc_ms(2026, 11, 24, 12, 0)) is None
    assert quiet_until(p, utc_ms(2026, 11, 26, 12, 0)) is None


def test_kolkata_half_hour_offset():
    p = prefs("Asia/Kolkata", quiet=("22:00", "07:00"))
    assert quiet_until(p, utc_ms(2026, 11, 23, 20, 0)) == utc_ms(2026, 11, 24, 1, 30)
    assert quiet_until(p, utc_ms(2026, 11, 23, 16, 29)) is None


def test_new_york_quiet_night_over_spring_forward_is_an_hour_shorter():
    # 2026-03-08: 02:00 EST becomes 03:00 EDT.
    p = prefs("America/New_York", quiet=("22:00", "07:00"))
    start = at("America/New_York", 2026, 3, 7, 22)
    end = quiet_until(p, start)
    assert end == utc_ms(2026, 3, 8, 11, 0) and end - start == 8 * H


def test_new_york_quiet_night_over_fall_back_is_an_hour_longer():
    p = prefs("America/New_York", quiet=("22:00", "07:00"))
    start = at("America/New_York", 2026, 10, 31, 22)
    assert quiet_until(p, start) - start == 10 * H


def test_berlin_a_bound_in_the_spring_gap_moves_to_the_transition():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    transition = utc_ms(2026, 3, 29, 1, 0)
    ending_in_gap = prefs("Europe/Berlin", quiet=("01:00", "02:30"))
    assert quiet_until(ending_in_gap, utc_ms(2026, 3, 29, 0, 30)) == transition
    assert quiet_until(ending_in_gap, transition) is None
    starting_in_gap = prefs("Europe/Berlin", quiet=("02:30", "04:00"))
    assert quiet_until(starting_in_gap, transition - 1) is None
    assert quiet_until(starting_in_gap, transition) == utc_ms(2026, 3, 29, 2, 0)


def test_berlin_a_window_inside_the_spring_gap_vanishes_that_day_only():
    p = prefs("Europe/Berlin", quiet=("02:00", "02:30"))
    for minute in range(-120, 180, 10):
        assert quiet_until(p, utc_ms(2026, 3, 29, 1, 0) + minute * MIN) is None
    assert quiet_until(p, at("Europe/Berlin", 2026, 3, 30, 2, 10)) == at("Europe/Berlin", 2026, 3, 30, 2, 30)


def test_berlin_a_repeated_bound_takes_its_first_occurrence():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:00-03:00 happens twice.
    ends_in_repeat = prefs("Europe/Berlin", quiet=("01:00", "02:30"))
    assert quiet_until(ends_in_repeat, utc_ms(2026, 10, 24, 23, 30)) == utc_ms(2026, 10, 25, 0, 30)
    assert quiet_until(ends_in_repeat, utc_ms(2026, 10, 25, 1, 15)) is None  # 02:15 CET, the second time
    starts_in_repeat = prefs("Europe/Berlin", quiet=("02:30", "04:00"))
    assert quiet_until(starts_in_repeat, utc_ms(2026, 10, 25, 0, 29)) is None
    assert quiet_until(starts_in_repeat, utc_ms(2026, 10, 25, 0, 30)) == utc_ms(2026, 10, 25, 3, 0)


def test_windows_covering_the_whole_week_are_capped_at_eight_days():
    # Daily 07:00 to 06:59 the next day, and a DND minute 06:59-07:00 every day.
    p = prefs("Europe/Berlin", quiet=("07:00", "06:59"), dnd=[(d, "06:59", "07:00") for d in range(7)])
    now = utc_ms(2026, 3, 25, 12, 0)
    assert quiet_until(p, now) == now + CAP_MS


def test_a_week_covered_but_for_one_minute_ends_there():
    p = prefs(quiet=("07:00", "06:59"), dnd=[(d, "06:59", "07:00") for d in range(7) if d != 4])
    assert quiet_until(p, utc_ms(2026, 11, 23, 12, 0)) == utc_ms(2026, 11, 27, 6, 59)  # Friday


def test_malformed_windows_are_ignored_and_an_unknown_zone_is_utc():
    p = {"timezone": "Nowhere/Special", "quiet_hours": {"start": "22:00", "end": "07:00"},
         "dnd": [{"day": 9, "start": "00:00", "end": "23:00"}, {"day": 0, "start": "25:00", "end": "23:00"}, "x"]}
    assert quiet_until(p, utc_ms(2026, 11, 23, 12, 0)) is None
    assert quiet_until(p, utc_ms(2026, 11, 23, 23, 0)) == utc_ms(2026, 11, 24, 7, 0)


def test_describe_quiet_hours_today():
    p = prefs("Europe/Berlin", quiet=("22:00", "07:00"))
    now = at("Europe/Berlin", 2026, 11, 24, 3)
    assert describe(p, quiet_until(p, now), now) == "quiet hours until 07:00 Europe/Berlin"


def test_describe_adds_the_weekday_when_the_end_is_not_today():
    p = prefs("Europe/Berlin", quiet=("22:00", "07:00"))
    now = at("Europe/Berlin", 2026, 11, 22, 23)  # Sunday
    assert describe(p, quiet_until(p, now), now) == "quiet hours until Mon 07:00 Europe/Berlin"


def test_describe_says_do_not_disturb_when_a_dnd_window_ends_the_period():
    p = prefs("Europe/Berlin", quiet=("22:00", "07:00"), dnd=[(0, "07:00", "09:00")])
    now = at("Europe/Berlin", 2026, 11, 23, 1)
    assert describe(p, quiet_until(p, now), now) == "do not disturb until 09:00 Europe/Berlin"
    now = at("Europe/Berlin", 2026, 11, 22, 23)
    assert describe(p, quiet_until(p, now), now) == "do not disturb until Mon 09:00 Europe/Berlin"


def test_describe_quiet_hours_win_a_tie():
    p = prefs(quiet=("22:00", "07:00"), dnd=[(0, "05:00", "07:00")])
    now = utc_ms(2026, 11, 23, 6, 0)
    assert describe(p, quiet_until(p, now), now) == "quiet hours until 07:00 UTC"


def test_describe_without_now_counts_from_the_start_of_the_quiet_period():
    p = prefs("Asia/Kolkata", quiet=("13:00", "15:00"))
    assert describe(p, at("Asia/Kolkata", 2026, 11, 23, 15)) == "quiet hours until 15:00 Asia/Kolkata"
    p = prefs("Asia/Kolkata", quiet=("22:00", "07:00"))
    assert describe(p, at("Asia/Kolkata", 2026, 11, 24, 7)) == "quiet hours until Tue 07:00 Asia/Kolkata"


def test_describe_a_week_or_more_away_gives_the_date():
    p = prefs(quiet=("07:00", "06:59"), dnd=[(d, "06:59", "07:00") for d in range(7)])
    now = utc_ms(2026, 11, 23, 12, 0)
    assert describe(p, quiet_until(p, now), now) == "quiet hours until Tue 1 Dec 12:00 UTC"


# Properties. Instants are drawn near the DST changes as well as anywhere in 2025-2028.

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
TRANSITIONS = [
    utc_ms(2026, 3, 29, 1, 0), utc_ms(2026, 10, 25, 1, 0),  # Berlin
    utc_ms(2026, 3, 8, 7, 0), utc_ms(2026, 11, 1, 6, 0),  # New York
    utc_ms(2026, 4, 4, 15, 0), utc_ms(2026, 10, 3, 15, 30),  # Lord Howe (30-minute shift)
]
# Times around the usual 02:00-03:00 transitions and midnight are the interesting ones.
hhmm = st.one_of(
    st.integers(0, 24 * 60 - 1),
    st.sampled_from([0, 60, 90, 120, 150, 179, 180, 23 * 60 + 59]),
).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")
windows = st.tuples(hhmm, hhmm)
instants = st.one_of(
    st.integers(utc_ms(2025, 1, 1, 0, 0), utc_ms(2028, 12, 31, 0, 0)),
    st.sampled_from(TRANSITIONS).flatmap(lambda t: st.integers(t - 36 * H, t + 36 * H)),
)


@st.composite
def any_prefs(draw, zones=ZONES):
    return prefs(
        draw(st.sampled_from(zones)),
        draw(st.none() | windows),
        draw(st.lists(st.tuples(st.integers(0, 6), hhmm, hhmm), max_size=4)),
    )


@given(any_prefs(), instants)
def test_the_end_is_later_the_instant_before_it_is_quiet_and_the_end_is_not(p, now):
    end = quiet_until(p, now)
    if end is None:
        return
    assert now < end <= now + CAP_MS
    assert quiet_until(p, end - 1) is not None
    if end < now + CAP_MS:
        assert quiet_until(p, end) is None
        assert quiet_until(p, end - 1) == end


@given(any_prefs(), instants, st.floats(0, 1))
def test_every_instant_of_a_quiet_period_has_the_same_end(p, now, fraction):
    end = quiet_until(p, now)
    assume(end is not None and end < now + CAP_MS)
    later = now + int((end - 1 - now) * fraction)
    assert quiet_until(p, later) == end


def wall_clock_quiet(p, now) -> bool:
    """An independent reading of the rule on the local wall clock (valid where there is no DST)."""
    local = to_local(ZoneInfo(p["timezone"]), now)
    minute, weekday = local.hour * 60 + local.minute, local.weekday()

    def parse(text):
        return int(text[:2]) * 60 + int(text[3:])

    windows = []
    if p["quiet_hours"]:
        windows += [(d, p["quiet_hours"]["start"], p["quiet_hours"]["end"]) for d in range(7)]
    windows += [(w["day"], w["start"], w["end"]) for w in p["dnd"]]
    for day, start, end in windows:
        s, e = parse(start), parse(end)
        if s < e and weekday == day and s <= minute < e:
            return True
        if s > e and ((weekday == day and minute >= s) or (weekday == (day + 1) % 7 and minute < e)):
            return True
    return False


@given(any_prefs(["UTC", "Asia/Kolkata"]), instants)
def test_quiet_matches_the_wall_clock_in_zones_without_dst(p, now):
    assert (quiet_until(p, now) is not None) == wall_clock_quiet(p, now)
