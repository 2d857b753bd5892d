"""The stored state: group keys, version 2 (each pending event once, cut to bounds), reading version 1."""
from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import policy
from agents.digest import digest_request
from agents.preferences import effective
from agents.rate_limit import Limits
from agents.state import (
    MAX_BODY,
    MAX_DATA_CHARS,
    MAX_DATA_ENTRIES,
    MAX_DATA_VALUE,
    MAX_TITLE,
    migrate_state,
    new_state,
    state_size_bound,
    stored_event,
)
from agents.types import GroupKey
from tests.agents.test_policy import CONFIG, T0, Driver, ev, events_strategy

PREFS = effective(None, "u1")


# -- group keys -------------------------------------------------------------------------------------

def test_group_keys_format_as_before():
    assert GroupKey("B", "PUSH", "COMMENT", 30_000).format() == "B|PUSH|COMMENT|30000"
    assert GroupKey("D", "EMAIL", None, 60_000).format() == "D|EMAIL|60000"
    assert GroupKey("T", "SMS", "A|B", 5).format() == "T|SMS|A|B|5"
    assert GroupKey.parse("B|PUSH|COMMENT|30000").series() == "B|PUSH|COMMENT"
    assert GroupKey.parse("D|EMAIL|60000").series() == "D|EMAIL"
    with pytest.raises(ValueError):
        GroupKey.parse("X|PUSH|1")


@given(st.sampled_from("BDT"), st.sampled_from(["EMAIL", "PUSH", "SMS"]), st.text(min_size=1, max_size=20),
       st.integers(0, 2**53))
def test_group_keys_parse_what_they_format_whatever_the_type_holds(kind, channel, type_, start):
    key = GroupKey(kind, channel, None if kind == "D" else type_, start)
    assert GroupKey.parse(key.format()) == key


# -- what is kept of an event ------------------------------------------------------------------------

def big(n: int, char: str = "x", **over) -> dict:
    return ev(n, title=char * 1_000, body=char * 10_000, data={f"k{i:03d}": char * 8_192 for i in range(100)}, **over)


def test_a_stored_event_is_cut_to_bounds_and_says_so():
    kept = stored_event(policy.normalize(big(1, cancel_key="c" * 300)))
    assert len(kept["title"]) == MAX_TITLE and kept["title"].endswith("…")
    assert len(kept["body"]) == MAX_BODY and kept["body"].endswith("…")
    assert len(kept["data"]) <= MAX_DATA_ENTRIES and all(len(v) <= MAX_DATA_VALUE for v in kept["data"].values())
    assert sum(len(k) + len(v) for k, v in kept["data"].items()) <= MAX_DATA_CHARS
    assert list(kept["data"]) == [f"k{i:03d}" for i in range(len(kept["data"]))], "the event's own entries, in order"
    assert len(kept["cancel_key"]) == 33
    assert stored_event(kept) == kept, "cutting twice changes nothing"
    small = policy.normalize(ev(2, channels=["PUSH"], batchable=False, cancel_key="c", data={"a": "1"}))
    assert stored_event(small) == {"event_id": "e2", "user_id": "u1", "type": "COMMENT", "priority": "NORMAL",
                                   "title": "title 2", "body": "b", "occurred_at": T0 + 2, "data": {"a": "1"},
                                   "cancel_key": "c", "channels": ["PUSH"], "batchable": False}


def test_a_pending_event_is_stored_once_however_many_groups_hold_it():
    """Fault 3: an offline user's NORMAL event waits in the push and the email batch; two events of 254 KB
    made a 1 MB state when each group kept its own full copy."""
    d = Driver()
    d.send(big(1, "a"), T0)
    d.send(big(2, "b"), T0 + 1)
    size = len(orjson.dumps(d.state))
    assert len(d.state["groups"]) == 2 and all(g["ids"] == ["e1", "e2"] for g in d.state["groups"].values())
    assert list(d.state["events"]) == ["e1", "e2"]
    assert orjson.dumps(d.state).count(b"a" * (MAX_BODY - 1)) == 1 and size < 30_000, "each body once, cut"
    assert size <= state_size_bound(2, remembered=0)


def test_a_request_built_from_a_cut_event_is_the_same_on_a_replay_and_keeps_its_delivery_id():
    outs = []
    for _ in range(2):  # the same record decided again from scratch, its state lost
        d = Driver()
        d.send(big(1), T0)
        d.run_until(T0 + 40_000)
        outs.append([r for _, r in d.requests if r["channel"] == "PUSH"])
    assert outs[0] == outs[1] and len(outs[0]) == 1
    request = outs[0][0]
    assert request["kind"] == "SINGLE" and request["body"].endswith("…") and len(request["body"]) == MAX_BODY
    online = Driver(online=False)
    online.send(big(1, batchable=False), T0)
    assert request["delivery_id"] in {r["delivery_id"] for _, r in online.requests}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.sampled_from(["x", "é", "€", "😀", '"']), st.booleans())
def test_a_state_stays_under_its_bound_whatever_the_events_hold(n, char, scheduled):
    d = Driver({"digest_mode": "DAILY", "max_batch_size": 1_000})
    for i in range(n):
        e = big(i, char, event_id=char * 200 + str(i), dedup_key=char * 300 + str(i), cancel_key=char * 300,
                type_=char * 60 + str(i % 3), channels=["PUSH", "EMAIL", "SMS", "INAPP", "WEBSOCKET"],
                deliver_after=T0 + 10**6 if scheduled and i % 2 else None)
        d.send(e, T0 + i)
    assert len(d.state["events"]) == n
    assert len(orjson.dumps(d.state)) <= state_size_bound(n, remembered=n)


# -- reading the version 1 format ---------------------------------------------------------------------

def to_v1(state: dict) -> dict:
    """What the version 1 code would have stored for ``state``: full events in every group and held entry."""
    old = {k: copy.deepcopy(v) for k, v in state.items() if k not in ("v", "events")}
    events = state["events"]
    old["held"] = [{"event": copy.deepcopy(events[h["id"]]), "release_at": h["release_at"], "why": h["why"]}
                   for h in state["held"]]
    for key, group in old["groups"].items():
        group["events"] = {i: copy.deepcopy(events[i]) for i in group.pop("ids")}
    return old


def test_migrate_moves_embedded_events_to_one_place_and_never_changes_its_input():
    d = Driver()
    d.send(ev(1, cancel_key="c"), T0)
    d.send(ev(2, "HIGH", deliver_after=T0 + 60_000), T0 + 1)
    old = to_v1(d.state)
    old["dedup"]["id:e9"] = {"event_id": "e9", "at_ms": T0, "until": T0 + 300_000}  # the format before lists
    frozen = copy.deepcopy(old)
    migrated = migrate_state(old)
    assert old == frozen
    assert migrated["v"] == 2 and set(migrated["events"]) == {"e1", "e2"}
    assert {k: v for k, v in migrated.items() if k != "dedup"} == {k: v for k, v in d.state.items() if k != "dedup"}
    assert migrated["dedup"]["id:e9"] == ["e9", T0 + 300_000]
    assert migrate_state(migrated) is migrated, "a current state is read as it is"
    with pytest.raises(ValueError):
        migrate_state({"v": 3})


def test_every_entry_point_reads_a_version_1_state():
    d = Driver()
    d.send(ev(1), T0)
    d.send(ev(2, "HIGH", deliver_after=T0 + 60_000), T0 + 1)
    old = to_v1(d.state)
    assert policy.next_due(old) == policy.next_due(d.state) and not policy.is_empty(old)
    assert policy.is_empty({"dedup": {}, "held": [], "groups": {}, "plans": {}, "rates": {}})
    for state in (old, d.state):
        tick = policy.on_tick(state, PREFS, False, T0 + 60_000, CONFIG)
        assert tick.state["v"] == 2 and sorted(r["event_ids"][0] for r in tick.requests) == ["e1", "e1", "e2", "e2",
                                                                                              "e2", "e2"]
    arrival = policy.on_event(old, ev(3), PREFS, False, T0 + 2, "t:0:3", CONFIG, offset=3)
    assert arrival.state["v"] == 2 and set(arrival.state["events"]) == {"e1", "e2", "e3"}


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.integers(0, 25))
def test_a_version_1_state_decides_the_rest_exactly_as_the_version_2_state_would(items, split):
    """Upgrade in the middle of anything: from the same point, the old format and the new one give the same
    decisions and requests (the events here are small: nothing is cut)."""
    prefs = effective({"max_batch_size": 4}, "u1")
    steps = []
    for n, (priority, type_, dkey, ckey, after, offset, online) in sorted(enumerate(items), key=lambda x: x[1][5]):
        now = T0 + offset
        e = ev(n, priority, type_=type_, dedup_key=dkey, cancel_key=ckey or ("c1" if type_ == "CANCEL" else None),
               deliver_after=(now + after) if after else None)
        steps += [("t", now, online, None, n), ("e", now, online, e, n)]
    steps += [("t", T0 + 130_000 + k * 60_000, False, None, None) for k in range(70)]

    def run(state, part):
        got = []
        for kind, now, online, e, n in part:
            out = (policy.on_tick(state, prefs, online, now, CONFIG) if kind == "t"
                   else policy.on_event(state, e, prefs, online, now, f"t:0:{n}", CONFIG, offset=n))
            state = out.state
            got.append((out.decisions, out.requests, policy.next_due(state)))
        return state, got

    cut_at = min(split, len(steps))
    middle, _ = run(None, steps[:cut_at])
    middle = middle or new_state()
    end_new, rest_new = run(middle, steps[cut_at:])
    end_old, rest_old = run(to_v1(middle), steps[cut_at:])
    assert rest_old == rest_new and end_old == end_new


def check_invariant(state: dict) -> None:
    named = {i for g in state["groups"].values() for i in g["ids"]} | {h["id"] for h in state["held"]}
    assert named == set(state["events"]), "every pending event stored once, nothing stored that nothing names"
    assert all(len(g["ids"]) == len(set(g["ids"])) and g["ids"] for g in state["groups"].values())
    full = {i for g in state["groups"].values() if g["kind"] != "DIGEST" for i in g["ids"]} | {h["id"] for h in state["held"]}
    assert all("body" in state["events"][i] for i in full), "only an event waiting for digests alone has no body"


@settings(max_examples=100, deadline=None)
@given(events_strategy, st.sampled_from([None, {"start": "11:30", "end": "12:10"}]), st.sampled_from([1, 3, 50]),
       st.sampled_from([Limits(), Limits(per_minute=2, per_hour=4, per_day=6)]), st.sampled_from(["HOURLY", "IMMEDIATE"]))
def test_stored_events_are_exactly_those_still_pending(items, quiet, max_batch, limits, mode):
    prefs = effective({"quiet_hours": quiet, "max_batch_size": max_batch, "digest_mode": mode}, "u1")
    config = policy.PolicyConfig(batch_window_s=30, digest_period_s=3600, limits=limits)
    state = None
    for n, (priority, type_, dkey, ckey, after, offset, online) in sorted(enumerate(items), key=lambda x: x[1][5]):
        now = T0 + offset
        e = ev(n, priority, type_=type_, dedup_key=dkey, cancel_key=ckey or ("c1" if type_ == "CANCEL" else None),
               deliver_after=(now + after) if after else None)
        state = policy.on_tick(state, prefs, online, now, config).state
        check_invariant(state)
        state = policy.on_event(state, e, prefs, online, now, f"t:0:{n}", config, offset=n).state
        check_invariant(state)
    for later in [*range(T0 + 120_000, T0 + 2 * 3_600_000, 60_000), *range(T0, T0 + 3 * 86_400_000, 3_600_000)]:
        state = policy.on_tick(state, prefs, False, later, config).state
        check_invariant(state)
    assert not state["events"] and not state["plans"]


def test_an_event_waiting_for_digests_alone_keeps_no_body_or_data_and_its_digest_is_unchanged():
    d = Driver()  # LOW: in-app at once, email in the digest
    d.send(big(1, priority="LOW", cancel_key="c9"), T0)
    d.send(ev(2, "LOW", title="second", data={"a": "1"}), T0 + 1)
    d.send(ev(3, "LOW", type_="TASK_DEADLINE"), T0 + 2)
    assert all("body" not in e and "data" not in e for e in d.state["events"].values())
    assert len(orjson.dumps(d.state["events"])) < 1_500
    d.send(ev(4, type_="CANCEL", cancel_key="c9"), T0 + 3)
    assert d.finals()["e1"]["outcome"] == "CANCELLED" and "e1" not in d.state["events"]
    d.run_until(T0 + 3_600_000, step=60_000)
    digest = [r for _, r in d.requests if r["kind"] == "DIGEST"]
    assert len(digest) == 1 and digest[0]["event_ids"] == ["e2", "e3"]
    full = [policy.normalize(ev(2, "LOW", title="second", data={"a": "1"})),
            policy.normalize(ev(3, "LOW", type_="TASK_DEADLINE"))]
    label = digest[0]["title"].rsplit(":", 1)[0]
    period = (int(digest[0]["data"]["period_start"]), int(digest[0]["data"]["period_end"]))
    assert digest_request("u1", "EMAIL", full, *period, label) == digest[0], "the same as from the full events"
