from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.batching import batch_key, batch_request, batch_requests, batchable, split_full, title, window
from agents.ids import delivery_id

T0 = 1_767_225_600_000


def ev(i: int, *, user: str = "u1", type_: str = "COMMENT", priority: str = "NORMAL", at: int | None = None, **extra) -> dict:
    return {"event_id": f"e{i:03d}", "user_id": user, "type": type_, "priority": priority, "title": f"title {i}",
            "body": "b", "data": {}, "occurred_at": T0 + i if at is None else at, "dedup_key": None,
            "batchable": True, "channels": None, "deliver_after": None, "cancel_key": None, **extra}


def test_windows_are_epoch_aligned_and_end_exclusive():
    assert window(T0 + 59_999, 60) == (T0, T0 + 60_000)
    assert window(T0 + 60_000, 60) == (T0 + 60_000, T0 + 120_000)
    assert window(T0 + 1, 3600) == (T0, T0 + 3_600_000)
    with pytest.raises(ValueError):
        window(T0, 0)


def test_the_batch_key_is_stable_and_never_collides():
    assert batch_key("u1", "COMMENT", "PUSH", T0) == batch_key("u1", "COMMENT", "PUSH", T0)
    keys = {batch_key("u1", "COMMENT", "PUSH", T0), batch_key("u2", "COMMENT", "PUSH", T0),
            batch_key("u1", "HABIT_REMINDER", "PUSH", T0), batch_key("u1", "COMMENT", "EMAIL", T0),
            batch_key("u1", "COMMENT", "PUSH", T0 + 60_000),
            batch_key("a\x1fb", "c", "PUSH", T0), batch_key("a", "b\x1fc", "PUSH", T0)}
    assert len(keys) == 7


def test_titles_per_type_singular_and_plural():
    assert title("TASK_DEADLINE", 3) == "3 task deadlines approaching"
    assert title("TASK_DEADLINE", 1) == "1 task deadline approaching"
    assert title("HABIT_REMINDER", 3) == "3 habit reminders"
    assert title("COMMENT", 3) == "3 new comments"
    assert title("COMMENT", 1) == "1 new comment"
    assert title("PROJECT_MILESTONE", 2) == "2 project milestones reached"
    assert title("BILLING_ALERT", 2) == "2 new billing alert notifications"
    assert title("BILLING_ALERT", 1) == "1 new billing alert notification"


def test_critical_and_unbatchable_events_are_not_batchable():
    assert batchable(ev(1))
    assert batchable({k: v for k, v in ev(1).items() if k != "batchable"})
    assert not batchable(ev(1, priority="CRITICAL"))
    assert not batchable(ev(1, batchable=False))


def test_a_batch_request():
    events = [ev(3, priority="LOW"), ev(1), ev(2, priority="HIGH")]
    req = batch_request("u1", "PUSH", "COMMENT", events, T0, T0 + 60_000)
    assert req == {
        "delivery_id": delivery_id("BATCH", "PUSH", "u1", ["type:COMMENT"], window=str(T0)),
        "user_id": "u1", "channel": "PUSH", "kind": "BATCH", "event_ids": ["e001", "e002", "e003"],
        "type": "COMMENT", "priority": "HIGH", "title": "3 new comments", "body": "title 1\ntitle 2\ntitle 3",
        "data": {"count": "3", "event_ids": "e001,e002,e003", "window_start": str(T0), "window_end": str(T0 + 60_000),
                 **{f"item.{n}.{k}": v for n in range(3) for k, v in (("type", "COMMENT"), ("title", f"title {n + 1}"))}},
        "created_at": T0 + 60_000,
    }


def test_each_item_is_listed_with_its_link_for_the_templates_up_to_a_bound():
    events = [ev(i, data={"action_url": f"https://app.example/c/{i}"}) for i in range(60)] + [ev(99)]
    data = batch_request("u1", "EMAIL", "COMMENT", events, T0, T0 + 60_000, chunk=0, chunks=1)["data"]
    assert data["item.0.title"] == "title 0" and data["item.0.action_url"] == "https://app.example/c/0"
    assert data["item.49.type"] == "COMMENT" and "item.50.title" not in data  # bounded
    only = batch_request("u1", "EMAIL", "COMMENT", [ev(7)], T0, T0 + 60_000)["data"]
    assert "item.0.action_url" not in only  # no link when the event has none


def test_the_body_lists_ten_titles_then_how_many_more_and_keeps_one_line_each():
    events = [ev(i) for i in range(14)] + [ev(99, title="two\nlines")]
    lines = batch_request("u1", "PUSH", "COMMENT", events, T0, T0 + 60_000)["body"].split("\n")
    assert lines == [f"title {i}" for i in range(10)] + ["and 5 more"]
    one = batch_request("u1", "PUSH", "COMMENT", [ev(99, title="two\nlines")], T0, T0 + 60_000)
    assert one["body"] == "two lines" and one["title"] == "1 new comment"


def test_data_event_ids_keep_whole_ids_and_say_how_many_were_left_out():
    events = [ev(i, event_id=f"{i:04d}-" + "x" * 95) for i in range(30)]
    req = batch_request("u1", "PUSH", "COMMENT", events, T0, T0 + 60_000)
    shown = req["data"]["event_ids"].split(",")
    assert len(req["data"]["event_ids"]) <= 1000
    assert shown == req["event_ids"][:len(shown)]
    assert int(req["data"]["event_ids_more"]) == 30 - len(shown) > 0
    assert len(req["event_ids"]) == 30


def test_occurred_at_may_be_a_datetime():
    at = datetime.fromtimestamp((T0 + 5) / 1000, tz=timezone.utc)
    req = batch_request("u1", "PUSH", "COMMENT", [ev(2, at=at), ev(1, at=T0 + 6)], T0, T0 + 60_000)
    assert req["event_ids"] == ["e002", "e001"]


def test_a_redelivered_event_counts_once():
    req = batch_request("u1", "PUSH", "COMMENT", [ev(1), ev(2), ev(1)], T0, T0 + 60_000)
    assert req["event_ids"] == ["e001", "e002"] and req["data"]["count"] == "2"


@pytest.mark.parametrize("bad", [ev(9, user="u2"), ev(9, type_="HABIT_REMINDER"), ev(9, channels=["EMAIL"])])
def test_a_batch_never_mixes_users_types_or_channels(bad):
    with pytest.raises(ValueError):
        batch_request("u1", "PUSH", "COMMENT", [ev(1), bad], T0, T0 + 60_000)


def test_an_empty_batch_is_refused_and_explicit_channels_that_include_it_are_fine():
    with pytest.raises(ValueError):
        batch_request("u1", "PUSH", "COMMENT", [], T0, T0 + 60_000)
    assert batch_request("u1", "PUSH", "COMMENT", [ev(1, channels=["EMAIL", "PUSH"])], T0, T0 + 60_000)


def test_a_full_window_becomes_several_batches_in_order():
    reqs = batch_requests("u1", "PUSH", "COMMENT", [ev(i) for i in reversed(range(5))], T0, T0 + 60_000, max_size=2)
    assert [r["event_ids"] for r in reqs] == [["e000", "e001"], ["e002", "e003"], ["e004"]]
    assert [r["data"]["part"] for r in reqs] == ["1/3", "2/3", "3/3"]
    assert reqs[1]["delivery_id"] == delivery_id("BATCH", "PUSH", "u1", ["type:COMMENT"], window=f"{T0}#1")
    assert [r["title"] for r in reqs] == ["2 new comments", "2 new comments", "1 new comment"]
    assert "part" not in batch_requests("u1", "PUSH", "COMMENT", [ev(1)], T0, T0 + 60_000, max_size=2)[0]["data"]
    with pytest.raises(ValueError):
        split_full([ev(1)], 0)


# a small pool of distinct events: ids unique, times may tie so that event_id breaks ties
pool_st = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["LOW", "NORMAL", "HIGH"])),
                   min_size=1, max_size=40).map(
    lambda specs: [ev(i, at=T0 + t, priority=p) for i, (t, p) in enumerate(specs)])


@given(pool_st, st.randoms(use_true_random=False))
def test_the_same_events_in_any_order_give_the_same_request(events, rnd):
    shuffled = events[:]
    rnd.shuffle(shuffled)
    assert (batch_request("u1", "INAPP", "COMMENT", shuffled, T0, T0 + 60_000)
            == batch_request("u1", "INAPP", "COMMENT", events, T0, T0 + 60_000))


@given(pool_st, st.integers(1, 12), st.randoms(use_true_random=False))
def test_split_full_keeps_every_event_once_in_order_in_bounded_chunks(events, max_size, rnd):
    shuffled = events[:]
    rnd.shuffle(shuffled)
    chunks = split_full(shuffled, max_size)
    flat = [e["event_id"] for chunk in chunks for e in chunk]
    assert sorted(flat) == sorted(e["event_id"] for e in events)
    assert flat == [e["event_id"] for e in sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))]
    assert all(1 <= len(chunk) <= max_size for chunk in chunks)
    reqs = batch_requests("u1", "EMAIL", "COMMENT", shuffled, T0, T0 + 60_000, max_size)
    assert len({r["delivery_id"] for r in reqs}) == len(reqs) == len(chunks)
    assert reqs == batch_requests("u1", "EMAIL", "COMMENT", events, T0, T0 + 60_000, max_size)


@given(pool_st, st.sampled_from(["u1", "u2"]), st.sampled_from(["COMMENT", "HABIT_REMINDER"]))
def test_a_batch_holds_only_its_own_user_and_type(events, user, type_):
    intruder = ev(500, user=user, type_=type_)
    mixed = events + [intruder]
    if (user, type_) == ("u1", "COMMENT"):
        assert batch_request("u1", "SMS", "COMMENT", mixed, T0, T0 + 60_000)["user_id"] == "u1"
    else:
        with pytest.raises(ValueError):
            batch_request("u1", "SMS", "COMMENT", mixed, T0, T0 + 60_000)


def test_whether_to_batch_is_the_callers_call_so_a_released_throttled_send_may_be_merged():
    req = batch_request("u1", "PUSH", "COMMENT", [ev(1), ev(2, batchable=False, priority="HIGH")], T0, T0 + 60_000)
    assert req["event_ids"] == ["e001", "e002"] and req["priority"] == "HIGH"


def test_a_window_released_again_with_other_events_is_the_same_delivery_but_an_early_cut_is_not():
    """After a crash a window may be released again holding an event more or less: the sinks must see the
    batch they already sent. Batches cut early (full) share a window, so they are named by their events."""
    first = batch_request("u1", "PUSH", "COMMENT", [ev(1), ev(2)], T0, T0 + 60_000)
    again = batch_request("u1", "PUSH", "COMMENT", [ev(1), ev(2), ev(3)], T0, T0 + 60_000)
    assert first["delivery_id"] == again["delivery_id"]
    assert batch_request("u1", "PUSH", "TASK_DEADLINE", [ev(1, type="TASK_DEADLINE")], T0, T0 + 60_000)["delivery_id"] \
        != first["delivery_id"], "another type is another batch"
    assert batch_request("u1", "PUSH", "COMMENT", [ev(1)], T0 + 60_000, T0 + 120_000)["delivery_id"] != first["delivery_id"]
    cut = [batch_request("u1", "PUSH", "COMMENT", events, T0, T0 + 60_000, by_content=True)["delivery_id"]
           for events in ([ev(1), ev(2)], [ev(3), ev(4)])]
    assert len(set(cut)) == 2 and first["delivery_id"] not in cut
