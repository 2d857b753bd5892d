import time

from agents.ids import delivery_id
from agents.route import make_decision, single_request

NOW = int(time.time() * 1000)
EVENT = {"event_id": "e1", "user_id": "u1", "type": "COMMENT", "priority": "NORMAL", "title": "t", "body": "b",
         "data": {"x": "1"}, "occurred_at": NOW - 5, "channels": None}


def test_a_single_request_has_a_delivery_id_of_its_event_and_channel_only():
    first, again = single_request(EVENT, "INAPP", NOW), single_request(EVENT, "INAPP", NOW + 1000)
    assert first == again, "decided again later, the request is the same"
    assert first["delivery_id"] != single_request(EVENT, "PUSH", NOW)["delivery_id"]
    assert first["kind"] == "SINGLE" and first["event_ids"] == ["e1"] and first["created_at"] == NOW - 5


def test_a_decision_is_final_unless_said_otherwise():
    decision = make_decision(EVENT, "ROUTED", NOW, channels=["INAPP"], reason="sent to inapp")
    assert decision["final"] is True and decision["release_at"] is None and decision["at"] == NOW
    interim = make_decision(EVENT, "BATCHED", NOW, reason="waiting", final=False, release_at=NOW + 30_000)
    assert interim["final"] is False and interim["release_at"] == NOW + 30_000


def test_delivery_ids_ignore_event_order_but_not_content():
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) == delivery_id("BATCH", "PUSH", "u", ["b", "a"])
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) != delivery_id("BATCH", "PUSH", "u", ["a", "c"])
    assert delivery_id("BATCH", "PUSH", "u", ["a"]) != delivery_id("BATCH", "EMAIL", "u", ["a"])


def test_delivery_ids_are_the_ones_earlier_releases_made():
    """A record decided again after an upgrade must name the delivery it named before: the sinks' ledger and
    the in-app table stop the second copy by this id. These are the ids the first release computed."""
    assert delivery_id("SINGLE", "PUSH", "user-1", ["e1"]) == "c73eceb12e68b9197c7f59d38fddc817"
    assert delivery_id("DIGEST", "EMAIL", "ü-ser", [], window="1-2") == "98c0fa6bb49eb36869f116abd899eb10"
    assert delivery_id("BATCH", "SMS", "u", ["b", "a", "é€"], window="w#1") == "57eefc3286da2e53219d9099aa49de6f"
