from hypothesis import given
from hypothesis import strategies as st

from agents.dedup import dedup_key, is_duplicate, seen

WINDOW = 300_000


def test_the_key_prefers_the_dedup_key_and_never_mixes_it_with_an_event_id():
    def key(event_id, dkey):
        return dedup_key({"user_id": "a", "event_id": event_id, "dedup_key": dkey})

    assert key("e1", "k") == key("e2", "k")
    assert key("e1", None) != key("e2", None)
    assert key("k", None) != key("x", "k")


def test_first_sight_is_not_a_duplicate():
    assert not is_duplicate(None, 1000)


def test_another_record_within_the_window_is_a_duplicate_and_after_it_is_not():
    entry = seen("e", 1000, WINDOW)
    assert is_duplicate(entry, 1000 + WINDOW - 1)
    assert not is_duplicate(entry, 1000 + WINDOW)


@given(st.lists(st.sampled_from(["e1", "e2", "e3"]), min_size=1, max_size=30))
def test_dedup_is_idempotent_each_id_is_accepted_once_within_a_window(ids):
    table: dict = {}
    accepted = []
    for event_id in ids:
        key = dedup_key({"user_id": "u", "event_id": event_id, "dedup_key": None})
        if not is_duplicate(table.get(key), 10):
            table[key] = seen(event_id, 10, WINDOW)
            accepted.append(event_id)
    assert sorted(accepted) == sorted(set(ids))


def test_a_long_dedup_key_is_kept_as_its_digest():
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    key = dedup_key({"event_id": "e1", "dedup_key": long_a})
    assert key == dedup_key({"event_id": "e2", "dedup_key": long_a}) != dedup_key({"event_id": "e1", "dedup_key": long_b})
    assert len(key) == 2 + 33 and dedup_key({"event_id": "e1", "dedup_key": "a" * 256}) == "k:" + "a" * 256
