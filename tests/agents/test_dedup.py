from hypothesis import given, strategies as st

from agents.dedup import dedup_key, expired, is_duplicate

WINDOW = 300_000


def test_the_key_is_per_user_and_prefers_the_dedup_key():
    assert dedup_key({"user_id": "a", "event_id": "e", "dedup_key": "k"}) != dedup_key({"user_id": "b", "event_id": "e", "dedup_key": "k"})
    assert dedup_key({"user_id": "a", "event_id": "e1", "dedup_key": "k"}) == dedup_key({"user_id": "a", "event_id": "e2", "dedup_key": "k"})
    assert dedup_key({"user_id": "a", "event_id": "e1", "dedup_key": None}) != dedup_key({"user_id": "a", "event_id": "e2", "dedup_key": None})


def test_first_sight_is_not_a_duplicate():
    assert not is_duplicate(None, "t:0:1", 1000, WINDOW)


def test_another_record_within_the_window_is_a_duplicate_and_after_it_is_not():
    seen = {"event_id": "e", "at_ms": 1000, "source": "t:0:1"}
    assert is_duplicate(seen, "t:0:2", 1000 + WINDOW - 1, WINDOW)
    assert not is_duplicate(seen, "t:0:2", 1000 + WINDOW, WINDOW)
    assert expired(seen, 1000 + WINDOW, WINDOW)


def test_reading_the_same_record_again_after_a_crash_is_a_redelivery_not_a_duplicate():
    seen = {"event_id": "e", "at_ms": 1000, "source": "t:0:1"}
    assert not is_duplicate(seen, "t:0:1", 2000, WINDOW)


@given(st.lists(st.sampled_from(["e1", "e2", "e3"]), min_size=1, max_size=30))
def test_dedup_is_idempotent_each_id_is_accepted_once_within_a_window(ids):
    table: dict = {}
    accepted = []
    for offset, event_id in enumerate(ids):
        event = {"user_id": "u", "event_id": event_id, "dedup_key": None}
        key = dedup_key(event)
        source = f"t:0:{offset}"
        if not is_duplicate(table.get(key), source, 10, WINDOW):
            table[key] = {"event_id": event_id, "at_ms": 10, "source": source}
            accepted.append(event_id)
    assert sorted(accepted) == sorted(set(ids))
