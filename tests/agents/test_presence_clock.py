from hypothesis import given
from hypothesis import strategies as st

from agents.clock import decision_time, release_limit, tick_time
from agents.presence import expiry, online

T = 1_764_000_000_000


def test_online_needs_an_online_entry_that_has_not_expired():
    assert online({"online": True, "expires_at": T + 1}, T)
    assert not online({"online": True, "expires_at": T}, T), "expired at expires_at exactly"
    assert not online({"online": False, "expires_at": T + 1}, T)
    assert not online({"online": True}, T) and not online({}, T) and not online(None, T)
    assert not online({"online": True, "expires_at": "soon"}, T), "a malformed entry is offline, not an error"


def test_a_connection_is_never_trusted_longer_than_the_ttl():
    assert expiry(T + 10 * 3_600_000, T, ttl_s=90) == T + 90_000
    assert expiry(T + 30_000, T, ttl_s=90) == T + 30_000


@given(st.integers(0, 2 * T), st.integers(0, 2 * T), st.integers(0, 86_400))
def test_expiry_is_the_earlier_of_the_claim_and_the_ttl(claim, at, ttl_s):
    got = expiry(claim, at, ttl_s)
    assert got <= claim and got <= at + ttl_s * 1000 and got in (claim, at + ttl_s * 1000)


def test_the_decision_time_is_the_records_unless_missing_or_ahead_of_the_wall_clock():
    assert decision_time(T - 5_000, T) == T - 5_000
    assert decision_time(T + 5_000, T) == T, "a fast producer clock must not release the future early"
    assert decision_time(None, T) == T and decision_time(0, T) == T and decision_time(-1, T) == T


def test_a_tick_waits_for_the_unread_events_only_when_many_are_behind():
    assert tick_time(T, unread=None, last_event_ms=T - 60_000) == T
    assert tick_time(T, unread=1000, last_event_ms=T - 60_000) == T, "at the threshold: its own time"
    assert tick_time(T, unread=1001, last_event_ms=T - 60_000) == T - 60_000
    assert tick_time(T, unread=5000, last_event_ms=T + 60_000) == T, "never later than the tick"
    assert tick_time(T, unread=5000, last_event_ms=None) == T
    assert tick_time(T, unread=11, last_event_ms=T - 1, behind=10) == T - 1


def test_a_tick_waits_for_a_backlog_s_tail_while_it_is_read_and_the_events_are_old():
    """The last few hundred events of a backlog are minutes older than the ticks read among them: a release at
    the tick's time would open a rate window their users' older events would count in."""
    assert tick_time(T, unread=5, last_event_ms=T - 60_000, live=True) == T - 60_000
    assert tick_time(T, unread=5, last_event_ms=T - 60_000, live=False) == T, "quiet: a marker is not a backlog"
    assert tick_time(T, unread=0, last_event_ms=T - 60_000, live=True) == T, "read to the end"
    assert tick_time(T, unread=5, last_event_ms=T - 5_000, live=True) == T, "a few seconds behind: live"
    assert tick_time(T, unread=5, last_event_ms=T - 5_001, live=True) == T - 5_001
    assert tick_time(T, unread=5, last_event_ms=T - 2_000, live=True, lag_ms=1_000) == T - 2_000
    assert tick_time(T, unread=5, last_event_ms=None, live=True) == T
    assert tick_time(T, unread=None, last_event_ms=T - 60_000, live=True) == T


@given(st.integers(1, 100_000), st.booleans())
def test_release_limit_is_the_chunk_when_quiet_and_a_tenth_when_busy(chunk, busy):
    got = release_limit(chunk, busy)
    assert got == (max(1, chunk // 10) if busy else chunk) and got >= 1
