import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.rate_limit import DAY_MS, HOUR_MS, MINUTE_MS, GlobalLimiter, Limits, next_allowed, record

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a day, hour and minute boundary
BIG = 10**9


def sends(times: list[int], counters: dict | None = None) -> dict | None:
    for t in times:
        counters = record(counters, t)
    return counters


def test_defaults_and_the_users_max_per_hour_caps_the_hour():
    assert Limits() == Limits(per_minute=10, per_hour=100, per_day=500)
    assert Limits().with_max_per_hour(None) == Limits()
    assert Limits().with_max_per_hour(20).per_hour == 20
    assert Limits().with_max_per_hour(1000).per_hour == 100
    assert Limits().with_max_per_hour(-5).per_hour == 0


def test_nothing_sent_is_allowed():
    assert next_allowed(None, T0, Limits()) is None
    assert next_allowed({}, T0, Limits()) is None


def test_the_minute_limit_binds_until_the_next_minute():
    now = T0 + 30_000
    counters = None
    for _ in range(10):
        assert next_allowed(counters, now, Limits()) is None
        counters = record(counters, now)
    assert next_allowed(counters, now, Limits()) == T0 + MINUTE_MS
    assert next_allowed(counters, T0 + MINUTE_MS - 1, Limits()) == T0 + MINUTE_MS
    assert next_allowed(counters, T0 + MINUTE_MS, Limits()) is None


def test_the_hour_limit_binds_until_the_next_hour():
    limits = Limits(per_minute=BIG, per_hour=3, per_day=BIG)
    counters = sends([T0 + 1, T0 + MINUTE_MS * 5, T0 + MINUTE_MS * 59])
    assert next_allowed(counters, T0 + MINUTE_MS * 59, limits) == T0 + HOUR_MS
    assert next_allowed(counters, T0 + HOUR_MS, limits) is None


def test_the_day_is_the_utc_day():
    limits = Limits(per_minute=BIG, per_hour=BIG, per_day=2)
    counters = sends([T0 + HOUR_MS, T0 + 23 * HOUR_MS])
    assert next_allowed(counters, T0 + 23 * HOUR_MS + 1, limits) == T0 + DAY_MS


def test_several_full_windows_answer_the_latest_next_start():
    limits = Limits(per_minute=2, per_hour=2, per_day=BIG)
    counters = sends([T0 + 10, T0 + 20])
    assert next_allowed(counters, T0 + 30, limits) == T0 + HOUR_MS


def test_record_resets_a_past_window_and_keeps_the_others():
    counters = sends([T0 + 10, T0 + 20, T0 + MINUTE_MS + 5])
    assert counters == {"m": [T0 + MINUTE_MS, 1], "h": [T0, 3], "d": [T0, 3]}


def test_counters_survive_a_json_round_trip():
    counters = sends([T0 + i for i in range(10)])
    again = json.loads(json.dumps(counters))
    assert next_allowed(again, T0 + 100, Limits()) == next_allowed(counters, T0 + 100, Limits()) == T0 + MINUTE_MS
    assert record(again, T0 + 200) == record(counters, T0 + 200)


def test_a_clock_stepping_back_frees_nothing():
    counters = sends([T0 + MINUTE_MS + i for i in range(10)])
    assert next_allowed(counters, T0 + 5, Limits()) == T0 + 2 * MINUTE_MS
    assert record(counters, T0 + 5)["m"] == [T0 + MINUTE_MS, 11]


@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=DAY_MS - 1))
def test_none_until_the_limit_then_the_next_window_start(limit, offset):
    now = T0 + offset
    limits = Limits(per_minute=limit, per_hour=BIG, per_day=BIG)
    counters = None
    for _ in range(limit):
        assert next_allowed(counters, now, limits) is None
        counters = record(counters, now)
    assert next_allowed(counters, now, limits) == now // MINUTE_MS * MINUTE_MS + MINUTE_MS


limits_st = st.builds(Limits, per_minute=st.integers(1, 5), per_hour=st.integers(1, 12), per_day=st.integers(1, 30))
gaps_st = st.lists(st.sampled_from([0, 1, 999, 20_000, MINUTE_MS, 7 * MINUTE_MS, HOUR_MS, 5 * HOUR_MS]), max_size=80)


@given(limits_st, st.integers(0, DAY_MS), gaps_st)
def test_a_sender_that_obeys_never_exceeds_any_window_and_is_allowed_at_the_returned_time(limits, start, gaps):
    counters, now, sent = None, T0 + start, []
    for gap in gaps:
        now += gap
        wait = next_allowed(counters, now, limits)
        if wait is not None:
            assert wait > now
            assert any(wait % size == 0 for size in (MINUTE_MS, HOUR_MS, DAY_MS))
            assert next_allowed(counters, wait, limits) is None
            now = max(now, wait)
            assert next_allowed(counters, now, limits) is None
        counters = record(counters, now)
        sent.append(now)
    for size, cap in ((MINUTE_MS, limits.per_minute), (HOUR_MS, limits.per_hour), (DAY_MS, limits.per_day)):
        per_window: dict[int, int] = {}
        for t in sent:
            per_window[t // size] = per_window.get(t // size, 0) + 1
        assert max(per_window.values(), default=0) <= cap


def test_the_global_limiter_allows_a_burst_then_the_rate():
    limiter = GlobalLimiter(rate_per_s=10, burst=3)
    assert [limiter.take(T0) for _ in range(3)] == [None, None, None]
    assert limiter.take(T0) == T0 + 100
    assert limiter.take(T0 + 99) == T0 + 100
    assert limiter.take(T0 + 100) is None
    assert limiter.take(T0 + 100) == T0 + 200


def test_the_global_limiter_rejects_nonsense():
    with pytest.raises(ValueError):
        GlobalLimiter(rate_per_s=0)
    with pytest.raises(ValueError):
        GlobalLimiter(rate_per_s=1, burst=0)


@given(st.floats(min_value=0.1, max_value=500), st.integers(1, 20),
       st.lists(st.integers(0, 3_000), min_size=1, max_size=200))
def test_the_global_limiter_keeps_its_rate_and_honours_its_answer(rate, burst, gaps):
    limiter = GlobalLimiter(rate, burst)
    now, taken = T0, 0
    for gap in gaps:
        now += gap
        wait = limiter.take(now)
        if wait is not None:
            assert wait > now
            now = wait
            assert limiter.take(now) is None
        taken += 1
    assert taken <= burst + (now - T0) * rate / 1000 + 1
