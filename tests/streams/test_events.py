import pytest

from streams.events import EventError, from_json


def test_defaults_are_filled_in():
    event = from_json({"user_id": "u", "type": "COMMENT", "title": "t", "body": "b"}, now_ms=123)
    assert event["priority"] == "NORMAL" and event["occurred_at"] == 123 and len(event["event_id"]) == 36
    assert event["channels"] is None and event["batchable"] is True


def test_iso_times_and_channel_case_are_accepted():
    event = from_json({"user_id": "u", "type": "T", "title": "t", "body": "b", "occurred_at": "2026-01-01T00:00:00Z",
                       "channels": ["email"], "priority": "high"})
    assert event["occurred_at"] == 1767225600000 and event["channels"] == ["EMAIL"] and event["priority"] == "HIGH"


@pytest.mark.parametrize("obj, fragment", [
    ([], "JSON object"),
    ({"type": "T", "title": "t", "body": "b"}, "missing user_id"),
    ({"user_id": "u", "type": "T", "title": "t", "body": "b", "priority": "URGENT"}, "priority"),
    ({"user_id": "u", "type": "T", "title": "t", "body": "b", "colour": "red"}, "unknown field"),
    ({"user_id": "u", "type": "T", "title": "t", "body": "b", "occurred_at": "yesterday"}, "ISO-8601"),
    ({"user_id": "u", "type": "T", "title": "t", "body": "b", "channels": ["FAX"]}, "channels"),
])
def test_mistakes_are_named(obj, fragment):
    with pytest.raises(EventError) as info:
        from_json(obj)
    assert fragment in str(info.value)
