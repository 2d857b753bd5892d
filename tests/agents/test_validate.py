import time
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


CONTROL = ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f", "\r"]


@pytest.mark.parametrize("char", CONTROL + ["\n", "\t"])
@pytest.mark.parametrize("field", ["title", "type", "event_id", "user_id", "dedup_key", "cancel_key"])
def test_a_control_character_in_a_text_field_is_refused_naming_the_field_not_the_content(field, char):
    value = f"secret{char}x"
    over = {field: value}
    key = value.encode() if field == "user_id" else b"u1"
    with pytest.raises(ValidationError) as info:
        validate_event(event(**over), key, NOW)
    assert info.value.reason == "VALIDATION"
    assert info.value.message.startswith(f"{field} ") and "control character" in info.value.message
    assert "secret" not in info.value.message and char not in info.value.message


@pytest.mark.parametrize("char", CONTROL)
def test_the_body_refuses_control_characters_but_line_breaks_and_tabs(char):
    validate_event(event(body="line one\nline\ttwo\n"), b"u1", NOW)
    with pytest.raises(ValidationError) as info:
        validate_event(event(body=f"secret{char}"), b"u1", NOW)
    assert info.value.message.startswith("body ") and "secret" not in info.value.message


@pytest.mark.parametrize("char", CONTROL + ["\n", "\t"])
def test_data_keys_and_values_refuse_every_control_character(char):
    with pytest.raises(ValidationError) as info:
        validate_event(event(data={"url": f"secret{char}"}), b"u1", NOW)
    assert info.value.message.startswith("data value of key 'url'") and "secret" not in info.value.message
    with pytest.raises(ValidationError) as info:
        validate_event(event(data={"ok": "v", f"secret{char}": "v"}), b"u1", NOW)
    assert info.value.message.startswith("data key #2") and "secret" not in info.value.message


@given(st.text(max_size=40))
def test_a_text_field_passes_exactly_when_it_has_no_cc_character(text):
    clean = not any(unicodedata.category(c) == "Cc" for c in text)
    try:
        validate_event(event(title=text), b"u1", NOW)
        passed = True
    except ValidationError:
        passed = False
    assert passed == clean
