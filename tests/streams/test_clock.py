"""The clock's release loop, without a broker: one user's failing release does not strand the others."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from agents import policy
from agents.preferences import effective
from streams.clock import RETRY_MS, Clock
from streams.outbox import Outbox
from streams.step import Step

NOW = 1_800_000_000_000


class States:
    """The users' states as the clock and the step see them (the real ones are a RocksDB table)."""

    def __init__(self, states: dict[str, dict]) -> None:
        self.states = states
        self.written: list = []
        self.flushed: list[int] = []  # partitions whose memtables the clock flushed once indexed

    def get(self, user_id: str, partition: int) -> dict | None:
        state = self.states.get(user_id)
        return None if state is None else orjson.loads(orjson.dumps(state))  # decoded afresh at every read

    def scan(self, partition: int):
        return iter(self.states.items())

    def write(self, changes: list) -> int:
        self.written.extend(changes)
        return len(changes)

    def flush(self, partitions) -> None:
        self.flushed.extend(partitions)

    def persist_offsets(self) -> None:
        pass


class Context:
    def of(self, user_id: str, partition: int, now_ms: int) -> tuple[dict, bool]:
        return effective(None, user_id), False


class Outputs:
    def encode(self, out: policy.Outcome) -> list:
        return []


def held_state(user: str) -> dict:
    event = {"event_id": f"{user}-e", "user_id": user, "type": "COMMENT", "priority": "NORMAL", "title": "t",
             "body": "b", "data": {}, "occurred_at": NOW - 10_000, "dedup_key": None, "batchable": True,
             "channels": ["INAPP"], "deliver_after": NOW - 1, "cancel_key": None}
    out = policy.on_event(None, {**event, "deliver_after": NOW - 1}, effective(None, user), False, NOW - 10_000,
                          "t:0:0", policy.PolicyConfig(), offset=0)
    assert policy.next_due(out.state) == NOW - 1  # held until then
    return out.state


def test_a_user_whose_release_fails_is_tried_again_later_and_the_others_are_released(monkeypatch):
    users = ["ok-1", "broken", "ok-2"]
    states = States({u: held_state(u) for u in users})
    feed = SimpleNamespace(partitions=set(), highwater=lambda topic, partition: None)
    outbox = Outbox("127.0.0.1:1")
    clock = Clock(feed, states, Context(), policy.PolicyConfig(), outbox, "t.events", "t-ticks", release_chunk=100)
    real = policy.on_tick

    def on_tick(state, prefs, online, now_ms, config, owned=False):
        if any(e.startswith("broken") for e in state.get("events", {})):
            if owned:
                state["held"].clear()  # changed in place before failing
            raise ValueError("data the policy cannot handle")
        return real(state, prefs, online, now_ms, config, owned=owned)

    monkeypatch.setattr(policy, "on_tick", on_tick)
    step = Step(states, Outputs(), outbox, clock.reindex)  # type: ignore[arg-type]
    clock.release(step, 0, NOW)
    index = clock.index(0)
    assert step.released == 3
    assert index.pop_due(NOW + RETRY_MS - 1) == [], "the failing user is not due again at once"
    assert index.pop_due(NOW + RETRY_MS) == ["broken"], "but it is tried again a minute later"
    released = {u for u in ("ok-1", "ok-2") if not step.state(u, 0)["held"] and states.states[u]["held"]}
    assert released == {"ok-1", "ok-2"}, "the users popped with it were released"
    assert step.state("broken", 0) == states.states["broken"], "what the failed release changed in place is not kept"


class Sent:
    """An outbox that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None, *args: object,
             **kwargs: object) -> None:
        self.records.append((topic, partition))


def test_ticks_read_in_one_batch_queue_one_tick_to_continue_not_one_each():
    """A batch that read several ticks of a partition with more users due than its budget queues one tick to
    go on; each tick used to queue its own, so ticks kept multiplying until every due user was released."""
    users = [f"u{i}" for i in range(5)]
    states = States({u: held_state(u) for u in users})
    feed = SimpleNamespace(partitions=set(), highwater=lambda topic, partition: None)
    outbox = Sent()
    clock = Clock(feed, states, Context(), policy.PolicyConfig(), outbox, "t.events", "t-ticks",  # type: ignore[arg-type]
                  release_chunk=2)
    step = Step(states, Outputs(), outbox, clock.reindex)  # type: ignore[arg-type]
    for _ in range(3):  # three ticks of partition 0 in one batch
        clock.release(step, 0, NOW)
    assert step.released == 2
    assert outbox.records == [("t-ticks", 0)]
    step = Step(states, Outputs(), outbox, clock.reindex)  # type: ignore[arg-type]
    clock.release(step, 0, NOW)
    assert step.released == 2 and outbox.records == [("t-ticks", 0)] * 2, "the next batch goes on, and queues its own"
    step = Step(states, Outputs(), outbox, clock.reindex)  # type: ignore[arg-type]
    clock.release(step, 0, NOW)
    assert step.released == 1 and len(outbox.records) == 2, "the last one is released; nothing is left to go on"


def release_looked_at(users: int, yields_after: int | None) -> tuple[Step, Clock, Sent, list[int]]:
    """A tick's release of ``users`` due users (budget 1,000) whose lane asks it to stop at its
    ``yields_after``-th look (None: never): the step, the clock, the ticks queued, and the users released
    by each look."""
    states = States({f"u{i:03}": held_state(f"u{i:03}") for i in range(users)})
    feed = SimpleNamespace(partitions=set(), highwater=lambda topic, partition: None)
    outbox = Sent()
    clock = Clock(feed, states, Context(), policy.PolicyConfig(), outbox, "t.events", "t-ticks",  # type: ignore[arg-type]
                  release_chunk=1_000)
    step = Step(states, Outputs(), outbox, clock.reindex)  # type: ignore[arg-type]
    looks: list[int] = []
    step.between = lambda: looks.append(step.released)
    step.yields = lambda partition: partition == 0 and len(looks) == yields_after
    clock.release(step, 0, NOW)
    return step, clock, outbox, looks


def test_a_release_lets_the_lane_look_every_32_users():
    step, clock, outbox, looks = release_looked_at(100, None)
    assert step.released == 100 and looks == [32, 64, 96]
    assert outbox.records == [] and clock.index(0).pop_due(NOW) == [], "none is left due, no tick queued"


def test_a_release_the_lane_waits_for_stops_and_queues_a_tick_for_the_rest():
    step, clock, outbox, looks = release_looked_at(100, 2)
    assert step.released == 64 and looks == [32, 64]
    assert outbox.records == [("t-ticks", 0)], "a tick is queued to go on"
    assert len(clock.index(0).pop_due(NOW)) == 36, "the users not released are still due"


def test_a_tick_among_a_backlog_s_last_events_releases_at_their_time_until_they_are_read(monkeypatch):
    """Fewer unread events than the count that makes a partition behind, but minutes old while they are read:
    the tick releases at the last event's time. Read to the end, or the partition quiet, it keeps its own."""
    from streams import clock as clock_module

    highwater = {"value": 105}
    feed = SimpleNamespace(partitions={0}, highwater=lambda topic, partition: highwater["value"])
    clock = Clock(feed, States({}), Context(), policy.PolicyConfig(), Sent(), "t.events", "t-ticks",  # type: ignore[arg-type]
                  release_chunk=100)
    clock.note_event(0, 100, NOW - 300_000)  # 4 unread, 5 minutes older than the tick
    assert clock.tick_time(0, NOW) == NOW - 300_000
    clock.note_event(0, 104, NOW - 299_000)  # read to the end
    assert clock.tick_time(0, NOW) == NOW
    highwater["value"] = 106  # a transaction marker after the last event: unread for ever
    assert clock.tick_time(0, NOW) == NOW - 299_000, "while events are read"
    now = clock_module.time.monotonic() + clock_module.LIVE_S
    monkeypatch.setattr(clock_module.time, "monotonic", lambda: now)
    assert clock.tick_time(0, NOW) == NOW, "a quiet partition is not waiting for its marker"


def _indexing_clock(count: int, monkeypatch, chunk: int = 3) -> tuple[Clock, States]:
    from streams import clock as clock_module

    monkeypatch.setattr(clock_module, "INDEX_CHUNK", chunk)
    states = States({f"u{i}": held_state(f"u{i}") for i in range(count)})
    feed = SimpleNamespace(partitions={0}, highwater=lambda topic, partition: None)
    return Clock(feed, states, Context(), policy.PolicyConfig(), Sent(), "t.events", "t-ticks",  # type: ignore[arg-type]
                 release_chunk=100), states


def test_without_an_event_loop_the_index_is_rebuilt_at_once(monkeypatch):
    clock, states = _indexing_clock(10, monkeypatch)
    assert len(clock.index(0)) == 10 and not clock.indexing()
    assert states.flushed == [0]  # what the restore left in memtables is freed once the partition is indexed


async def test_in_the_event_loop_the_index_is_rebuilt_a_chunk_at_a_time_while_users_change(monkeypatch, caplog):
    """The worker goes on deciding while its users are indexed: the rebuild yields between chunks, and a user
    changed meanwhile keeps the due time of that change, not the one of the older state the rebuild reads."""
    caplog.set_level("INFO", logger="herald.clock")
    clock, states = _indexing_clock(10, monkeypatch)
    index = clock.index(0)
    assert len(index) == 0 and clock.indexing(), "nothing read before the event loop runs the rebuild"
    changed_before = "u9"  # changed before the rebuild reads it: nothing due any more
    clock.reindex(changed_before, 0, policy.new_state())
    await asyncio.sleep(0)
    assert 0 < len(index) < 10 and clock.indexing(), "one chunk, then the rest of the worker runs"
    read = next(u for u in states.states if index.due(u) is not None)
    clock.reindex(read, 0, {**states.states[read], "held": [{"id": "x", "release_at": NOW + 5}]})  # changed after
    while clock.indexing():
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert index.due(changed_before) is None, "the older state read later does not index it again"
    assert index.due(read) == NOW + 5
    assert {u: index.due(u) for u in states.states if u not in (changed_before, read)} == {
        u: NOW - 1 for u in states.states if u not in (changed_before, read)}
    assert "indexed 9 users of partitions [0]" in caplog.text  # all but the one changed before it was read
    assert states.flushed == [0]


async def test_a_rebalance_stops_a_rebuild_and_the_next_one_starts_over(monkeypatch):
    clock, _ = _indexing_clock(10, monkeypatch)
    clock.index(0)
    await asyncio.sleep(0)
    clock.forget()
    await asyncio.sleep(0)
    assert not clock.indexing() and clock.due() == {}
    index = clock.index(0)
    while clock.indexing():
        await asyncio.sleep(0)
    assert len(index) == 10


async def test_a_rebuild_that_fails_stops_the_next_use_of_the_index(monkeypatch):
    clock, states = _indexing_clock(4, monkeypatch)

    def broken(partition):
        yield "u0", states.states["u0"]
        raise OSError("corrupt block")

    states.scan = broken  # type: ignore[method-assign]
    clock.index(0)
    for _ in range(3):
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="indexing the users' states failed") as failed:
        clock.index(0)
    assert isinstance(failed.value.__cause__, OSError)
