"""The preferences the policy gets: one shared dict for every user without a record, which it never changes."""
from __future__ import annotations

import copy
import random

from agents import policy
from agents.preferences import effective
from streams import context
from streams.context import NO_RECORD, UserContext


class Table:
    def __init__(self, values: dict) -> None:
        self.values = values

    def get(self, key: str, partition: int | None = None):
        return self.values.get(key)


def user_context(prefs: dict, presence: dict | None = None) -> UserContext:
    ctx = UserContext.__new__(UserContext)
    ctx.preferences, ctx.presence, ctx._effective = Table(prefs), Table(presence or {}), {}  # type: ignore[assignment]
    return ctx


def test_users_without_a_record_share_the_defaults_and_a_record_gets_its_own_effective_preferences():
    ctx = user_context({"u3": {"user_id": "u3", "timezone": "Asia/Tokyo", "channels": {"SMS": False}}})
    a, _ = ctx.of("u1", 0, 0)
    b, _ = ctx.of("u2", 0, 0)
    c, online = ctx.of("u3", 0, 0)
    assert a is b is NO_RECORD and not online
    assert {k: v for k, v in a.items() if k != "user_id"} == {k: v for k, v in effective(None, "u1").items()
                                                               if k != "user_id"}
    assert c["timezone"] == "Asia/Tokyo" and c["channels"] == {"SMS": False} and c["user_id"] == "u3"
    assert list(ctx._effective) == ["u3"], "only a user with a record takes a place in the cache"


def test_the_policy_never_changes_the_shared_preferences():
    before = copy.deepcopy(NO_RECORD)
    rng = random.Random(7)
    state, now = None, 1_800_000_000_000
    config = policy.PolicyConfig(batch_window_s=2, digest_period_s=10)
    for i in range(300):
        now += rng.choice((5, 500, 3_000, 20_000))
        event = {"event_id": f"e{i}", "user_id": "u", "type": rng.choice(["COMMENT", "TASK_DEADLINE", "CANCEL"]),
                 "priority": rng.choice(["LOW", "NORMAL", "HIGH", "CRITICAL"]), "title": "t", "body": "b",
                 "data": {}, "occurred_at": now, "dedup_key": None, "batchable": rng.random() < 0.9,
                 "channels": None, "deliver_after": now + 5_000 if rng.random() < 0.1 else None,
                 "cancel_key": "k" if rng.random() < 0.2 else None}
        state = policy.on_event(state, event, context.NO_RECORD, False, now, "t:0:0", config).state
        if rng.random() < 0.3:
            state = policy.on_tick(state, context.NO_RECORD, rng.random() < 0.5, now + 30_000, config).state
    assert NO_RECORD == before
