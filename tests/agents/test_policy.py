"""The per-user state machine, driven with an explicit clock: arrival, ticks, and the final accounting."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import policy, quiet_hours
from agents.preferences import effective
from agents.rate_limit import GlobalLimiter, Limits

T0 = int(datetime(2026, 11, 23, 12, 0, 3, tzinfo=timezone.utc).timestamp() * 1000)  # a Monday, 12:00:03 UTC
CONFIG = policy.PolicyConfig(batch_window_s=30, digest_period_s=3600)


def ev(n: int, priority: str = "NORMAL", type_: str = "COMMENT", user: str = "u1", **over) -> dict:
    return {"event_id": f"e{n}", "user_id": user, "type": type_, "priority": priority, "title": f"title {n}",
            "body": "b", "data": {}, "occurred_at": T0 + n, "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None, **over}


class Driver:
    """Feeds events and ticks to one user's state and keeps everything that came out."""

    def __init__(self, prefs: dict | None = None, online: bool = False, config: policy.PolicyConfig = CONFIG):
        self.state = None
        self.prefs = effective(prefs, "u1")
        self.online = online
        self.config = config
        self.decisions: list[dict] = []
        self.requests: list[tuple[int, dict]] = []
        self.offset = 0

    def _take(self, out: policy.Outcome, now: int) -> None:
        self.state = out.state
        self.decisions += out.decisions
        self.requests += [(now, r) for r in out.requests]

    def send(self, event: dict, now: int, source: str | None = None) -> None:
        self.offset += 1
        source = source or f"t:0:{self.offset}"
        self._take(policy.on_event(self.state, event, self.prefs, self.online, now, source, self.config,
                                   offset=int(source.rsplit(":", 1)[1])), now)

    def tick(self, now: int) -> None:
        self._take(policy.on_tick(self.state, self.prefs, self.online, now, self.config), now)

    def run_until(self, end: int, step: int = 1000, start: int = T0) -> None:
        for now in range(start, end + 1, step):
            self.tick(now)

    def finals(self) -> dict[str, dict]:
        counts = Counter(d["event_id"] for d in self.decisions if d["final"])
        assert all(n == 1 for n in counts.values()), counts
        return {d["event_id"]: d for d in self.decisions if d["final"]}

    def channels_of(self, kind: str) -> list[str]:
        return sorted(r["channel"] for _, r in self.requests if r["kind"] == kind)


def test_normal_offline_goes_in_app_now_and_push_and_email_in_a_batch():
    d = Driver()
    for n in range(3):
        d.send(ev(n, type_="TASK_DEADLINE"), T0 + n * 1000)
    assert d.channels_of("SINGLE") == ["INAPP"] * 3 and d.channels_of("BATCH") == []
    assert {x["outcome"] for x in d.decisions if not x["final"]} == {"BATCHED"}
    d.run_until(T0 + 40_000)
    batches = [r for _, r in d.requests if r["kind"] == "BATCH"]
    assert sorted(r["channel"] for r in batches) == ["EMAIL", "PUSH"]
    assert all(sorted(r["event_ids"]) == ["e0", "e1", "e2"] and r["title"].startswith("3 ") for r in batches)
    finals = d.finals()
    assert {f["outcome"] for f in finals.values()} == {"BATCHED"} and len(finals) == 3
    assert finals["e0"]["delivery_id"] in {r["delivery_id"] for r in batches}


def test_critical_ignores_quiet_hours_and_preferences():
    d = Driver({"quiet_hours": {"start": "00:00", "end": "23:59"}, "channels": {"SMS": False}, "minimum_priority": "HIGH"})
    d.send(ev(1, "CRITICAL"), T0)
    assert d.channels_of("SINGLE") == ["EMAIL", "INAPP", "PUSH", "SMS"]
    assert d.finals()["e1"]["outcome"] == "ROUTED"


def test_quiet_hours_hold_then_release_when_they_end():
    prefs = {"quiet_hours": {"start": "11:00", "end": "13:00"}}
    d = Driver(prefs)
    d.send(ev(1, "HIGH"), T0)
    assert d.requests == []
    interim = d.decisions[-1]
    assert interim["outcome"] == "DEFERRED_QUIET_HOURS" and not interim["final"]
    end = quiet_hours.quiet_until(effective(prefs, "u1"), T0)
    assert interim["release_at"] == end and "13:00" in interim["reason"]
    d.run_until(end - 1000, step=60_000)
    assert d.requests == [], "nothing non-critical inside quiet hours"
    d.tick(end)
    assert d.channels_of("SINGLE") == ["EMAIL", "INAPP", "PUSH", "SMS"] and d.finals()["e1"]["outcome"] == "ROUTED"


def test_low_goes_in_app_now_and_email_in_the_digest():
    d = Driver()
    for n in range(4):
        d.send(ev(n, "LOW", type_="HABIT_REMINDER"), T0 + n)
    assert d.channels_of("SINGLE") == ["INAPP"] * 4
    d.run_until(T0 + 3_600_000, step=60_000)
    digests = [r for _, r in d.requests if r["kind"] == "DIGEST"]
    assert len(digests) == 1 and digests[0]["channel"] == "EMAIL" and len(digests[0]["event_ids"]) == 4
    assert {f["outcome"] for f in d.finals().values()} == {"DIGESTED"}


def test_a_user_with_nothing_gets_no_digest():
    d = Driver({"digest_mode": "HOURLY"})
    d.run_until(T0 + 7_200_000, step=60_000)
    assert d.requests == [] and d.decisions == []


def test_scheduled_events_wait_for_deliver_after():
    d = Driver(online=True)
    d.send(ev(1, "HIGH", deliver_after=T0 + 120_000), T0)
    assert d.decisions[-1]["outcome"] == "SCHEDULED" and d.requests == []
    d.run_until(T0 + 119_000)
    assert d.requests == []
    d.tick(T0 + 120_000)
    assert d.channels_of("SINGLE") == ["INAPP", "PUSH", "WEBSOCKET"]


def test_cancel_withdraws_scheduled_and_batched_parts():
    d = Driver()
    d.send(ev(1, "HIGH", deliver_after=T0 + 600_000, cancel_key="task-9"), T0)
    d.send(ev(2, "NORMAL", cancel_key="task-9"), T0 + 10)
    d.send(ev(3, "NORMAL", cancel_key="other"), T0 + 20)
    d.send(ev(4, "NORMAL", type_="CANCEL", cancel_key="task-9"), T0 + 30)
    d.run_until(T0 + 700_000, step=10_000)
    finals = d.finals()
    assert finals["e1"]["outcome"] == "CANCELLED" and finals["e2"]["outcome"] == "CANCELLED"
    assert finals["e4"]["outcome"] == "CANCELLED" and "2 pending" in finals["e4"]["reason"]
    assert finals["e3"]["outcome"] == "BATCHED"
    sent = {i for _, r in d.requests if r["channel"] != "INAPP" for i in r["event_ids"]}
    assert sent == {"e3"}, "nothing cancelled reached push or email"


def test_rate_limit_throttles_then_sends_when_the_window_allows():
    d = Driver(config=policy.PolicyConfig(limits=Limits(per_minute=3, per_hour=100, per_day=500)))
    for n in range(5):
        d.send(ev(n, "HIGH"), T0 + n)
    push_now = [r for now, r in d.requests if r["channel"] == "PUSH"]
    assert len(push_now) == 3
    throttled = [x for x in d.decisions if x["outcome"] == "THROTTLED"]
    assert throttled and all(x["release_at"] == (T0 // 60_000 + 1) * 60_000 for x in throttled)
    d.run_until(T0 + 120_000)
    pushed = [i for _, r in d.requests if r["channel"] == "PUSH" for i in r["event_ids"]]
    assert sorted(pushed) == [f"e{n}" for n in range(5)], "throttled, never dropped"
    assert len(d.finals()) == 5


def test_critical_bypasses_the_rate_limit():
    d = Driver(config=policy.PolicyConfig(limits=Limits(per_minute=1, per_hour=1, per_day=1)))
    for n in range(3):
        d.send(ev(n, "CRITICAL"), T0 + n)
    assert len([r for _, r in d.requests if r["channel"] == "SMS"]) == 3


def test_dedup_key_and_a_record_read_again():
    d = Driver(online=True)
    d.send(ev(1, "HIGH", dedup_key="k"), T0, source="t:0:1")
    d.send(ev(2, "HIGH", dedup_key="k"), T0 + 1000, source="t:0:2")
    assert d.finals()["e2"]["outcome"] == "DEDUPLICATED"
    # read again after a crash (offset at or below what the state took in): nothing changes, nothing is emitted
    state, decisions, requests = d.state, len(d.decisions), len(d.requests)
    for offset, n in ((1, 1), (2, 2)):
        out = policy.on_event(state, ev(n, "HIGH", dedup_key="k"), d.prefs, True, T0 + 5000, f"t:0:{offset}", CONFIG,
                              offset=offset)
        assert out.state == state and not out.decisions and not out.requests
    assert len(d.decisions) == decisions and len(d.requests) == requests
    # a state that was lost decides the record again the same way (same clock: the record's timestamp)
    first = policy.on_event(None, ev(3, "HIGH"), d.prefs, False, T0, "t:0:3", CONFIG, offset=3)
    again = policy.on_event(None, ev(3, "HIGH"), d.prefs, False, T0, "t:0:3", CONFIG, offset=3)
    assert first.decisions == again.decisions and first.requests == again.requests and first.state == again.state
    # a part waiting in a batch is not added twice, and a later record is taken in
    offline = Driver()
    offline.state = policy.on_event(None, ev(4), offline.prefs, False, T0, "t:0:4", CONFIG, offset=4).state
    assert policy.on_event(offline.state, ev(4), offline.prefs, False, T0 + 500, "t:0:4", CONFIG, offset=4).state \
        == offline.state
    offline.run_until(T0 + 40_000)
    assert [r["event_ids"] for _, r in offline.requests if r["channel"] == "PUSH"] == [["e4"]]


def test_a_record_moved_here_twice_is_decided_once():
    """A record produced to the wrong partition is moved home at least once: after a crash its original is
    read and moved again. The second copy (same original partition and offset) changes nothing."""
    prefs = Driver().prefs
    first = policy.on_event(None, ev(1, "HIGH"), prefs, True, T0, "t:2:10", CONFIG, offset=10, moved_from=(0, 7))
    assert [d["outcome"] for d in first.decisions] == ["ROUTED"] and first.state["moved"] == {"0": 7}
    again = policy.on_event(first.state, ev(1, "HIGH"), prefs, True, T0 + 50, "t:2:11", CONFIG, offset=11,
                            moved_from=(0, 7))
    assert again.state == first.state and not again.decisions and not again.requests
    # a later record moved from the same partition, or one from another partition, is taken in
    later = policy.on_event(first.state, ev(2, "HIGH"), prefs, True, T0 + 60, "t:2:12", CONFIG, offset=12,
                            moved_from=(0, 9))
    other = policy.on_event(later.state, ev(3, "HIGH"), prefs, True, T0 + 70, "t:2:13", CONFIG, offset=13,
                            moved_from=(1, 3))
    assert [d["outcome"] for d in later.decisions + other.decisions] == ["ROUTED", "ROUTED"]
    assert other.state["moved"] == {"0": 9, "1": 3}
    # without the mark (a record produced to its home partition) the same event_id is a duplicate, decided
    plain = policy.on_event(other.state, ev(1, "HIGH"), prefs, True, T0 + 80, "t:2:14", CONFIG, offset=14)
    assert [d["outcome"] for d in plain.decisions] == ["DEDUPLICATED"]


def test_preferences_suppress_by_type_and_minimum_priority():
    d = Driver({"types": {"COMMENT": False}, "minimum_priority": "NORMAL"})
    d.send(ev(1, "HIGH", type_="COMMENT"), T0)
    d.send(ev(2, "LOW", type_="TASK_DEADLINE"), T0)
    finals = d.finals()
    assert finals["e1"]["outcome"] == finals["e2"]["outcome"] == "SUPPRESSED_PREFERENCE"
    assert d.requests == []


def test_a_full_batch_goes_before_its_window_ends():
    d = Driver({"max_batch_size": 3})
    for n in range(3):
        d.send(ev(n), T0 + n)
    assert sorted(r["channel"] for _, r in d.requests if r["kind"] == "BATCH") == ["EMAIL", "PUSH"]


events_strategy = st.lists(st.tuples(
    st.sampled_from(["CRITICAL", "HIGH", "NORMAL", "LOW"]),
    st.sampled_from(["COMMENT", "TASK_DEADLINE", "CANCEL"]),
    st.sampled_from([None, "k1", "k2"]),           # dedup_key
    st.sampled_from([None, "c1"]),                 # cancel_key
    st.sampled_from([None, 30_000, 400_000]),      # deliver_after offset
    st.integers(min_value=0, max_value=120_000),   # arrival offset
    st.booleans(),                                 # online
), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.sampled_from([None, {"start": "11:30", "end": "12:10"}]))
def test_every_event_gets_exactly_one_final_decision_and_batches_never_mix(items, quiet):
    prefs = effective({"quiet_hours": quiet, "max_batch_size": 4}, "u1")
    state, decisions, requests = None, [], []
    events = {}
    arrivals = sorted(enumerate(items), key=lambda x: x[1][5])
    now = T0
    for n, (priority, type_, dkey, ckey, after, offset, is_online) in arrivals:
        now = T0 + offset
        e = ev(n, priority, type_=type_, dedup_key=dkey, cancel_key=ckey or ("c1" if type_ == "CANCEL" else None),
               deliver_after=(now + after) if after else None)
        events[e["event_id"]] = e
        out = policy.on_tick(state, prefs, is_online, now, CONFIG)
        state, decisions, requests = out.state, decisions + out.decisions, requests + [(now, r) for r in out.requests]
        out = policy.on_event(state, e, prefs, is_online, now, f"t:0:{n}", CONFIG)
        state, decisions, requests = out.state, decisions + out.decisions, requests + [(now, r) for r in out.requests]
    for later in range(now, now + 3_700_000, 10_000):
        out = policy.on_tick(state, prefs, False, later, CONFIG)
        state, decisions, requests = out.state, decisions + out.decisions, requests + [(later, r) for r in out.requests]
    finals = Counter(d["event_id"] for d in decisions if d["final"])
    assert set(finals) == set(events) and set(finals.values()) == {1}, "every input accounted for exactly once"
    for at, r in requests:
        kinds = {events[i]["type"] for i in r["event_ids"]}
        assert r["kind"] == "DIGEST" or len(kinds) == 1, "a batch never mixes types"
        assert {events[i]["user_id"] for i in r["event_ids"]} == {r["user_id"]}
        if quiet and r["priority"] != "CRITICAL":
            assert quiet_hours.quiet_until(prefs, at) is None, "nothing non-critical inside quiet hours"
    assert policy.next_due(state) is None or not state["held"], "nothing left waiting forever"


@settings(max_examples=100, deadline=None)
@given(events_strategy)
def test_a_state_handed_over_is_changed_in_place_to_the_same_result_and_one_not_handed_over_never(items):
    """``owned``: the same outcomes as with a copy, in the object given; without it the input stays as it was."""
    prefs = effective({"max_batch_size": 4}, "u1")
    copied = owned = None
    for n, (priority, type_, dkey, ckey, after, offset, is_online) in sorted(enumerate(items), key=lambda x: x[1][5]):
        now = T0 + offset
        e = ev(n, priority, type_=type_, dedup_key=dkey, cancel_key=ckey or ("c1" if type_ == "CANCEL" else None),
               deliver_after=(now + after) if after else None)
        for call in (lambda s, o: policy.on_tick(s, prefs, is_online, now, CONFIG, owned=o),
                     lambda s, o: policy.on_event(s, e, prefs, is_online, now, f"t:0:{n}", CONFIG, offset=n, owned=o)):
            before = orjson.dumps(copied)
            a, b = call(copied, False), call(owned, True)
            assert orjson.dumps(copied) == before, "a state not handed over is never changed"
            assert owned is None or b.state is owned, "a state handed over is the one changed"
            assert orjson.dumps(b.state) == orjson.dumps(a.state)
            assert (b.decisions, b.requests) == (a.decisions, a.requests)
            copied, owned = a.state, b.state


def test_the_global_limit_spans_users_defers_what_is_over_it_and_spares_critical():
    config = policy.PolicyConfig(batch_window_s=30, digest_period_s=3600,
                                 global_limits={"SMS": GlobalLimiter(rate_per_s=2, burst=2)})
    prefs = effective(None, "x")
    outs = [policy.on_event(None, ev(n, "HIGH", user=f"u{n}"), prefs, False, T0, f"t:0:{n}", config, offset=n)
            for n in range(3)]
    sms = [[r for r in o.requests if r["channel"] == "SMS"] for o in outs]
    assert [len(s) for s in sms] == [1, 1, 0], "two tokens at once, the third user's SMS waits"
    throttled = [d for d in outs[2].decisions if d["outcome"] == "THROTTLED"]
    assert throttled and throttled[0]["release_at"] == T0 + 500 and throttled[0]["channels"] == ["SMS"]
    later = policy.on_tick(outs[2].state, prefs, False, T0 + 500, config)
    assert [r["channel"] for r in later.requests] == ["SMS"], "sent when the bucket allows, not dropped"
    critical = policy.on_event(None, ev(9, "CRITICAL", user="u9"), prefs, False, T0 + 500, "t:0:9", config, offset=9)
    assert "SMS" in [r["channel"] for r in critical.requests], "CRITICAL bypasses the global limit"


def test_a_part_late_for_a_window_already_sent_goes_in_the_next_one_never_in_a_second_request_of_that_window():
    """The worker behind (or a record read after a rebalance): an event whose timestamp falls in a batch
    window or digest period already released joins the next one, so each window is sent once, whole."""
    d = Driver()  # offline: NORMAL push/email parts are batched (30 s), LOW email parts digested (1 h)
    window_end = (T0 // 30_000 + 1) * 30_000
    d.send(ev(1, "NORMAL"), T0)
    d.send(ev(2, "NORMAL"), T0 + 1)
    d.send(ev(3, "LOW"), T0 + 2)
    d.tick(window_end)
    first = [r for _, r in d.requests if r["kind"] == "BATCH" and r["channel"] == "PUSH"]
    assert [r["event_ids"] for r in first] == [["e1", "e2"]]
    d.send(ev(4, "NORMAL"), T0 + 3)  # decided after its window was sent
    d.send(ev(5, "NORMAL"), window_end + 5)
    late = [r for r in d.decisions if r["event_id"] == "e4" and not r["final"]]
    assert late and late[-1]["release_at"] == window_end + 30_000, "waits for the next window"
    d.run_until(T0 + 2 * 3_600_000, step=30_000, start=window_end + 30_000)
    push = [r for _, r in d.requests if r["kind"] == "BATCH" and r["channel"] == "PUSH"]
    assert [sorted(r["event_ids"]) for r in push] == [["e1", "e2"], ["e4", "e5"]]
    assert len({r["delivery_id"] for r in push}) == 2
    digests = [r for _, r in d.requests if r["kind"] == "DIGEST"]
    d2 = Driver()
    d2.send(ev(6, "LOW"), T0)
    period_end = [r for r in d2.decisions if not r["final"]][-1]["release_at"]
    d2.tick(period_end)
    d2.send(ev(7, "LOW"), T0 + 5)  # late for the period just sent
    d2.run_until(period_end + 3_600_000, step=60_000, start=period_end + 60_000)
    got = [r for _, r in d2.requests if r["kind"] == "DIGEST"]
    assert [r["event_ids"] for r in got] == [["e6"], ["e7"]] and got[0]["delivery_id"] != got[1]["delivery_id"]
    assert len(digests) == 1 and d.finals()["e3"]["outcome"] == "DIGESTED"
    assert {e: f["outcome"] for e, f in d2.finals().items()} == {"e6": "DIGESTED", "e7": "DIGESTED"}


def test_a_state_written_by_the_previous_format_is_still_read():
    """Dedup entries were dicts before they became [event_id, until]: a worker upgraded over old state must
    index, expire and decide with them rather than fail."""
    old = policy.new_state()
    old["dedup"]["id:e1"] = {"event_id": "e1", "at_ms": T0, "source": "t:0:1", "until": T0 + 300_000}
    assert policy.next_due(old) == T0 + 300_000
    again = policy.on_event(old, ev(1, "HIGH"), effective(None, "u1"), False, T0 + 1000, "t:0:2", CONFIG, offset=2)
    assert [d["outcome"] for d in again.decisions] == ["DEDUPLICATED"]
    assert policy.is_empty(policy.on_tick(old, effective(None, "u1"), False, T0 + 300_000, CONFIG).state)


GARBAGE = st.one_of(st.none(), st.integers(-10, 10**6), st.booleans(), st.text(max_size=12), st.floats(allow_nan=False),
                    st.lists(st.integers(0, 9), max_size=2), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                    st.sampled_from(["Mars/Olympus", "25:00", "HOURLY", "DAILY", "WEEKLY", "HIGH", "Europe/Berlin"]))
BAD_PREFS = st.dictionaries(st.sampled_from(sorted(effective(None, "u1"))), GARBAGE, max_size=8)


@settings(max_examples=200, deadline=None)
@given(BAD_PREFS, st.booleans(), st.sampled_from(["CRITICAL", "HIGH", "NORMAL", "LOW"]), st.booleans())
def test_a_bad_stored_preferences_record_never_makes_the_policy_raise(raw, lenient_only, priority, online):
    """Whether read through ``effective`` or handed over raw, a malformed record decides and releases."""
    prefs = raw if lenient_only else effective(raw, "u1")
    d = Driver(online=online)
    d.prefs = prefs
    d.send(ev(1, priority), T0)
    d.send(ev(2, priority, deliver_after=T0 + 60_000, cancel_key="c"), T0 + 1)
    d.send(ev(3, "NORMAL"), T0 + 2)
    d.run_until(T0 + 9 * 24 * 3_600_000, step=3_600_000)
    assert set(d.finals()) == {"e1", "e2", "e3"}


def test_an_unknown_time_zone_reads_as_utc_in_reasons():
    d = Driver({"timezone": "Mars/Olympus"})
    d.prefs["timezone"] = "Mars/Olympus"  # as if stored before zones were checked
    d.send(ev(1, "HIGH", deliver_after=T0 + 120_000), T0)
    assert d.decisions[-1]["outcome"] == "SCHEDULED" and d.decisions[-1]["reason"].endswith(" UTC")


def test_invalid_batch_sizes_and_windows_take_the_defaults():
    d = Driver()
    d.prefs.update(max_batch_size=-1, batch_window_s=-5)
    for n in range(3):
        d.send(ev(n), T0 + n)
    d.run_until(T0 + 40_000)
    push = [r for _, r in d.requests if r["channel"] == "PUSH"]
    assert [len(r["event_ids"]) for r in push] == [3]


def test_explicit_channels_choose_the_channels_but_batching_and_digests_still_apply():
    """Contract: ``channels`` overrides which channels routing picks; each part is then placed as usual."""
    d = Driver()
    d.send(ev(1, "NORMAL", channels=["PUSH", "EMAIL"]), T0)
    d.send(ev(2, "NORMAL", channels=["PUSH"]), T0 + 1)
    d.send(ev(3, "LOW", channels=["EMAIL"]), T0 + 2)
    assert d.requests == [], "nothing at once: push and email parts wait for their batch or digest"
    interim = {x["event_id"]: x["outcome"] for x in d.decisions if not x["final"]}
    assert interim == {"e1": "BATCHED", "e2": "BATCHED", "e3": "DIGESTED"}
    d.run_until(T0 + 3_600_000, step=30_000)
    push = [r for _, r in d.requests if r["channel"] == "PUSH"]
    assert [(r["kind"], r["event_ids"]) for r in push] == [("BATCH", ["e1", "e2"])]
    email = sorted((r["kind"], r["event_ids"]) for _, r in d.requests if r["channel"] == "EMAIL")
    assert email == [("DIGEST", ["e3"]), ("SINGLE", ["e1"])]
    assert {e: f["outcome"] for e, f in d.finals().items()} == {"e1": "BATCHED", "e2": "BATCHED", "e3": "DIGESTED"}


def test_explicit_channels_send_at_once_when_high_or_not_batchable_and_respect_quiet_hours():
    d = Driver()
    d.send(ev(1, "HIGH", channels=["PUSH", "EMAIL"]), T0)
    d.send(ev(2, "NORMAL", channels=["PUSH", "EMAIL"], batchable=False), T0 + 1)
    d.send(ev(3, "LOW", channels=["EMAIL"], batchable=False), T0 + 2)
    assert sorted((r["channel"], r["event_ids"][0]) for _, r in d.requests) == [
        ("EMAIL", "e1"), ("EMAIL", "e2"), ("EMAIL", "e3"), ("PUSH", "e1"), ("PUSH", "e2")]
    assert all(r["kind"] == "SINGLE" for _, r in d.requests)
    quiet = Driver({"quiet_hours": {"start": "11:00", "end": "13:00"}})
    quiet.send(ev(4, "HIGH", channels=["PUSH"]), T0)
    assert quiet.requests == [] and quiet.decisions[-1]["outcome"] == "DEFERRED_QUIET_HOURS"


def test_explicit_channels_respect_the_rate_limit():
    d = Driver(config=policy.PolicyConfig(limits=Limits(per_minute=1, per_hour=100, per_day=500)))
    for n in range(2):
        d.send(ev(n, "HIGH", channels=["PUSH"]), T0 + n)
    assert len(d.requests) == 1 and d.decisions[-1]["outcome"] == "THROTTLED"


def test_the_channel_lists_are_the_contracts_channels():
    from agents import routing
    from herald.enums import CHANNELS

    assert sorted(routing.ORDER) == sorted(CHANNELS)
    assert set(policy.IMMEDIATE_ONLY) <= set(CHANNELS) and set(policy.LIMITED) <= set(CHANNELS)


def test_a_group_is_rate_limited_as_its_most_urgent_event():
    """A group holding a CRITICAL part is not held back by the rate limit (CRITICAL bypasses it); the old
    ranking (CRITICAL = 0, max) took the least urgent priority of the group instead."""
    config = policy.PolicyConfig(limits=Limits(per_minute=1, per_hour=100, per_day=500))
    state = {"dedup": {}, "held": [], "groups": {}, "plans": {}, "rates": {}}  # written by the version 1 format
    state["rates"]["PUSH"] = {"m": [T0 // 60_000 * 60_000, 1], "h": [T0 // 3_600_000 * 3_600_000, 1],
                              "d": [T0 // 86_400_000 * 86_400_000, 1]}
    events = {"e1": policy.normalize(ev(1, "CRITICAL")), "e2": policy.normalize(ev(2, "LOW"))}
    state["groups"][f"T|PUSH|COMMENT|{T0}"] = {"kind": "BATCH", "type": "COMMENT", "channel": "PUSH", "start": T0,
                                               "end": T0, "label": "", "events": events}
    out = policy.on_tick(state, effective(None, "u1"), False, T0, config)
    assert [(r["channel"], sorted(r["event_ids"])) for r in out.requests] == [("PUSH", ["e1", "e2"])]
    assert not [d for d in out.decisions if d["outcome"] == "THROTTLED"]


def test_a_digest_over_the_rate_limit_waits_whole_and_goes_as_one_digest():
    """It used to become a throttled batch of its first event's type, which refused the digest's other types
    (ValueError at every tick: the user's releases stuck)."""
    config = policy.PolicyConfig(batch_window_s=30, digest_period_s=3600, limits=Limits(per_minute=10, per_hour=100,
                                                                                          per_day=2))
    d = Driver(config=config)
    d.send(ev(1, "LOW", type_="COMMENT"), T0)
    d.send(ev(2, "LOW", type_="TASK_DEADLINE"), T0 + 1)
    end = [x for x in d.decisions if not x["final"]][-1]["release_at"]
    d.send(ev(3, "HIGH"), end - 100)
    d.send(ev(4, "HIGH"), end - 50)  # the day's two emails are gone
    d.tick(end)
    throttled = [x for x in d.decisions if x["outcome"] == "THROTTLED"]
    assert {x["event_id"] for x in throttled} == {"e1", "e2"} and not [r for _, r in d.requests if r["kind"] == "DIGEST"]
    next_day = (end // 86_400_000 + 1) * 86_400_000
    assert all(x["release_at"] == next_day for x in throttled)
    d.run_until(next_day + 600_000, step=600_000, start=end + 60_000)
    digests = [r for _, r in d.requests if r["kind"] == "DIGEST"]
    assert [(r["channel"], r["event_ids"]) for r in digests] == [("EMAIL", ["e1", "e2"])]
    assert {e: f["outcome"] for e, f in d.finals().items() if e in ("e1", "e2")} == {"e1": "DIGESTED", "e2": "DIGESTED"}


@given(held=st.lists(st.integers(0, 10**6), max_size=3), ends=st.lists(st.integers(0, 10**6), max_size=3),
       dedup=st.lists(st.integers(0, 10**6), max_size=3), days=st.lists(st.integers(0, 10**6), max_size=3))
def test_next_due_is_the_earliest_release_window_end_last_dedup_expiry_or_day_window_end(held, ends, dedup, days):
    """A user is next due at the earliest of: a held event's release, a group's end, when its last dedup key
    expires (one visit clears them all), a rate counter's day window end; never when it has none of them."""
    state = policy.new_state()
    state["held"] = [{"id": f"h{i}", "release_at": T0 + t} for i, t in enumerate(held)]
    state["groups"] = {f"g{i}": {"end": T0 + t, "ids": []} for i, t in enumerate(ends)}
    state["dedup"] = {f"k{i}": [f"e{i}", T0 + t] for i, t in enumerate(dedup)}
    state["rates"] = {c: {"m": [T0, 1], "d": [T0 + t, 1]} for c, t in zip(("EMAIL", "PUSH", "SMS"), days)}
    state["rates"]["INAPP"] = {"m": [T0, 1]}  # no day window: not a time
    times = [*(T0 + t for t in held + ends), *(T0 + t + 86_400_000 for t in days)]
    if dedup:
        times.append(T0 + max(dedup))
    assert policy.next_due(state) == (min(times) if times else None)
