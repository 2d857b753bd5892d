import time

from agents.ids import delivery_id

NOW = int(time.time() * 1000)
EVENT = {"event_id": "e1", "user_id": "u1", "type": "COMMENT", "priority": "NORMAL", "title": "t", "body": "b",
         "data": {"x": "1"}, "occurred_at": NOW - 5, "channels": None}


def test_delivery_ids_ignore_event_order_but_not_content():
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) == delivery_id("BATCH", "PUSH", "u", ["b", "a"])
    assert delivery_id("BATCH", "PUSH", "u", ["a", "b"]) != delivery_id("BATCH", "PUSH", "u", ["a", "c"])
    assert delivery_id("BATCH", "PUSH", "u", ["a"]) != delivery_id("BATCH", "EMAIL", "u", ["a"])
