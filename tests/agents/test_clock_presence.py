"""The decision clock and presence rules (pure)."""
from __future__ import annotations

from agents.clock import decision_time, release_limit, tick_time
from agents.presence import expiry, online


def test_a_record_is_decided_at_its_own_time_unless_it_has_none_or_is_in_the_future():
    assert decision_time(1_000, 5_000) == 1_000
    assert decision_time(None, 5_000) == 5_000
    assert decision_time(0, 5_000) == 5_000
    assert decision_time(-3, 5_000) == 5_000
    assert decision_time(9_000, 5_000) == 5_000  # a producer's clock ahead must not release the future


def test_a_tick_waits_for_the_events_still_unread_on_its_partition():
    assert tick_time(10_000, unread=5, last_event_ms=2_000, behind=1_000) == 10_000
    assert tick_time(10_000, unread=5_000, last_event_ms=2_000, behind=1_000) == 2_000
    assert tick_time(10_000, unread=None, last_event_ms=2_000) == 10_000
    assert tick_time(1_000, unread=5_000, last_event_ms=2_000, behind=1_000) == 1_000


def test_a_busy_partition_releases_a_tenth_at_a_time_and_never_nothing():
    assert release_limit(2_000, busy=False) == 2_000
    assert release_limit(2_000, busy=True) == 200
    assert release_limit(5, busy=True) == 1


def test_presence_counts_only_while_online_and_not_expired():
    assert online({"online": True, "expires_at": 2_000}, 1_000)
    assert not online({"online": True, "expires_at": 1_000}, 1_000)
    assert not online({"online": False, "expires_at": 9_000}, 1_000)
    assert not online(None, 1_000)
    assert not online({}, 1_000)


def test_a_connection_is_trusted_for_the_ttl_at_most():
    assert expiry(record_expires_at_ms=10_000, record_time_ms=1_000, ttl_s=120) == 10_000
    assert expiry(record_expires_at_ms=10**12, record_time_ms=1_000, ttl_s=120) == 121_000
