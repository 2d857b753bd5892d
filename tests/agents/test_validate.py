import time

import pytest
from hypothesis import given, strategies as st

from agents.validate import EARLIEST_MS, MAX_DATA_ENTRIES, ValidationError, validate_event

NOW = int(time.time() * 1000)


def event(**over):
    base = {"event_id": "e1", "user_id": "u1", "type": "COMMENT", "priority": "NORMAL", "title": "t", "body": "b",
            "data": {}, "occurred_at": NOW, "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None}
    return {**base, **over}


def test_a_valid_event_passes():
    validate_event(event(), b"u1", NOW)


@pytest.mark.parametrize("over, key, fragment", [
    ({"user_id": ""}, b"", "user_id is missing"),
    ({"event_id": "  "}, b"u1", "event_id is missing"),
    ({"event_id": "x" * 300}, b"u1", "over the limit"),
    ({}, b"\xff\xfe", "not valid UTF-8"),
    ({}, b"someone-else", "does not match user_id"),
    ({"occurred_at": 1_700_000_000}, b"u1", "before 2000"),
    ({"occurred_at": NOW + 3 * 24 * 3600 * 1000}, b"u1", "in the future"),
    ({"data": {str(i): "v" for i in range(10_000)}}, b"u1", "entries"),
    ({"type": "CANCEL"}, b"u1", "cancel_key"),
    ({"deliver_after": NOW + 400 * 24 * 3600 * 1000}, b"u1", "deliver_after"),
])
def test_each_rule_refuses_with_a_readable_reason(over, key, fragment):
    with pytest.raises(ValidationError) as info:
        validate_event(event(**over), key, NOW)
    assert info.value.reason == "VALIDATION"
    assert fragment in info.value.message


def test_a_null_key_is_allowed_since_the_user_is_in_the_record():
    validate_event(event(), None, NOW)


@given(st.integers(min_value=EARLIEST_MS, max_value=NOW), st.integers(min_value=0, max_value=MAX_DATA_ENTRIES))
def test_plausible_times_and_bounded_maps_always_pass(occurred, entries):
    validate_event(event(occurred_at=occurred, data={f"k{i}": "v" for i in range(entries)}), b"u1", NOW)
