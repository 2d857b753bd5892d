import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.digest import digest_request, group_name
from agents.ids import delivery_id

T0 = 1_767_225_600_000
DAY = 86_400_000


def ev(event_id: str, type_: str, title: str, *, at: int, priority: str = "NORMAL", user: str = "u1") -> dict:
    return {"event_id": event_id, "user_id": user, "type": type_, "priority": priority, "title": title,
            "body": "", "data": {}, "occurred_at": at, "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None}


EVENTS = [
    ev("d1", "TASK_DEADLINE", "Old task due", at=T0 + 1),
    ev("d2", "TASK_DEADLINE", "Budget due", at=T0 + 2),
    ev("d3", "TASK_DEADLINE", "Launch plan due", at=T0 + 3),
    ev("d4", "TASK_DEADLINE", "Report due", at=T0 + 4, priority="HIGH"),
    ev("d5", "TASK_DEADLINE", "Older task due", at=T0),
    ev("c1", "COMMENT", "Ann replied", at=T0 + 10, priority="LOW"),
    ev("c2", "COMMENT", "Bob replied", at=T0 + 11, priority="LOW"),
    ev("b1", "BILLING_ALERT", "Card expires", at=T0 + 20),
]


def test_no_events_no_digest():
    assert digest_request("u1", "EMAIL", [], T0, T0 + DAY, "Your daily digest") is None


def test_a_daily_digest():
    req = digest_request("u1", "EMAIL", EVENTS, T0, T0 + DAY, "Your daily digest")
    assert req["kind"] == "DIGEST" and req["type"] == "DIGEST" and req["channel"] == "EMAIL"
    assert req["title"] == "Your daily digest: 8 notifications"
    assert req["body"].split("\n") == [
        "Task deadlines (5): Report due; Launch plan due; Budget due; and 2 more",
        "Billing alert notifications (1): Card expires",
        "Comments (2): Bob replied; Ann replied",
    ]
    items = {k: v for k, v in req["data"].items() if k.startswith("item.")}
    assert {k: v for k, v in req["data"].items() if k not in items} == {
        "count.TASK_DEADLINE": "5", "count.BILLING_ALERT": "1", "count.COMMENT": "2",
        "total": "8", "period_start": str(T0), "period_end": str(T0 + DAY)}
    # every item for the templates, group by group as the body orders them, most important first
    assert [items[f"item.{n}.title"] for n in range(8)] == [
        "Report due", "Launch plan due", "Budget due", "Old task due", "Older task due", "Card expires",
        "Bob replied", "Ann replied"]
    assert items["item.5.type"] == "BILLING_ALERT" and not any(k.endswith("action_url") for k in items)
    assert req["priority"] == "HIGH" and req["created_at"] == T0 + DAY
    assert req["event_ids"] == ["d5", "d1", "d2", "d3", "d4", "c1", "c2", "b1"]
    assert req["delivery_id"] == delivery_id("DIGEST", "EMAIL", "u1", [], window=f"{T0}-{T0 + DAY}")
    # the period names the digest, not its content: released again after a crash with an event less, it is the same
    assert digest_request("u1", "EMAIL", EVENTS[1:], T0, T0 + DAY, "Your daily digest")["delivery_id"] == req["delivery_id"]


def test_one_notification_is_singular_and_top_n_zero_lists_counts_only():
    req = digest_request("u1", "INAPP", EVENTS[:1], T0, T0 + DAY, "Your hourly digest", top_n=0)
    assert req["title"] == "Your hourly digest: 1 notification"
    assert req["body"] == "Task deadlines (1)"


def test_another_users_event_is_refused():
    with pytest.raises(ValueError):
        digest_request("u1", "EMAIL", EVENTS + [ev("x", "COMMENT", "t", at=T0, user="u2")], T0, T0 + DAY, "d")


def test_group_names():
    assert group_name("HABIT_REMINDER") == "Habit reminders"
    assert group_name("PROJECT_MILESTONE") == "Project milestones"
    assert group_name("SECURITY_ALERT") == "Security alert notifications"


events_st = st.lists(
    st.tuples(st.sampled_from(["TASK_DEADLINE", "COMMENT", "HABIT_REMINDER", "X_Y"]),
              st.sampled_from(["LOW", "NORMAL", "HIGH", "CRITICAL"]), st.integers(0, 4), st.text(max_size=8)),
    min_size=1, max_size=40,
).map(lambda specs: [ev(f"e{i}", t, title, at=T0 + at, priority=p) for i, (t, p, at, title) in enumerate(specs)])


@given(events_st, st.integers(0, 5))
def test_the_body_counts_add_up_to_the_number_of_events(events, top_n):
    req = digest_request("u1", "EMAIL", events, T0, T0 + DAY, "Digest", top_n=top_n)
    lines = req["body"].split("\n")
    counts = [int(re.match(r"[^(]*\((\d+)\)", line).group(1)) for line in lines]
    assert sum(counts) == len(events) == int(req["data"]["total"])
    assert len(lines) == len({e["type"] for e in events})
    assert sum(int(v) for k, v in req["data"].items() if k.startswith("count.")) == len(events)


@given(events_st, st.randoms(use_true_random=False))
def test_the_same_events_in_any_order_give_the_same_digest(events, rnd):
    shuffled = events[:]
    rnd.shuffle(shuffled)
    assert (digest_request("u1", "PUSH", shuffled, T0, T0 + DAY, "Digest")
            == digest_request("u1", "PUSH", events, T0, T0 + DAY, "Digest"))


def test_a_digest_item_keeps_its_link_even_from_a_light_stored_event():
    """A state keeps of a digest-only event its title and link (no body, no other data)."""
    from agents.state import stored_event

    event = {**ev("x1", "COMMENT", "Ann replied", at=T0), "body": "long body", "data": {"action_url": "https://a.example/1",
                                                                                         "entity_id": "e"}}
    light = stored_event(event, light=True)
    assert "body" not in light and light["data"] == {"action_url": "https://a.example/1"}
    req = digest_request("u1", "EMAIL", [light], T0, T0 + DAY, "Your daily digest")
    assert req["data"]["item.0.action_url"] == "https://a.example/1"
