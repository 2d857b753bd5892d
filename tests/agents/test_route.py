import time

from agents.ids import delivery_id
from agents.route import duplicate, route

NOW = int(time.time() * 1000)
EVENT = {"event_id": "e1", "user_id": "u1", "type": "COMMENT", "priority": "NORMAL", "title": "t", "body": "b",
         "data": {"x": "1"}, "occurred_at": NOW - 5, "channels": None}


def test_an_event_is_routed_in_app_with_a_deterministic_delivery_id():
    first, again = route(EVENT, NOW), route(EVENT, NOW + 1000)
    assert [r["channel"] for r in first.requests] == ["INAPP"]
    assert first.requests[0]["delivery_id"] == again.requests[0]["delivery_id"]
    assert first.decision["outcome"] == "ROUTED" and first.decision["delivery_id"] == first.requests[0]["delivery_id"]


def test_explicit_channels_win():
    routed = route({**EVENT, "channels": ["EMAIL", "PUSH"]}, NOW)
    assert [r["channel"] for r in routed.requests] == ["EMAIL", "PUSH"]
    assert len({r["delivery_id"] for r in routed.requests}) == 2


def test_a_duplicate_has_a_decision_and_no_delivery():
    routed = duplicate(EVENT, NOW, "e0")
    assert routed.requests == [] and routed.decision["outcome"] == "DEDUPLICATED"
    assert "e0" in routed.decision["reason"]


def test_delivery_ids_ignore_event_order_but_not_content():
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) == delivery_id("BATCH", "PUSH", "u", ["b", "a"])
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) != delivery_id("BATCH", "PUSH", "u", ["a", "c"])
    assert delivery_id("BATCH", "PUSH", "u", ["a"]) != delivery_id("BATCH", "EMAIL", "u", ["a"])
