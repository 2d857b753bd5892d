"""The CRITICAL lane's check ahead of a tick still to decide (``Pipeline._decide_event`` with ``until``): an
outcome that would make its user due for that tick is not kept, and nothing of it changes; one that leaves
the user due later is kept. Without a broker: the step's table and outputs are stand-ins."""
from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from types import SimpleNamespace

from agents import preferences
from agents.lane import Lane
from agents.policy import Outcome
from herald.kafka import home_partition
from herald.settings import Settings
from streams.clock import due_time
from streams.config import policy_config
from streams.express import Candidate
from streams.metrics import WorkerMetrics
from streams.step import Step as RealStep
from streams.worker import Pipeline, _tick_bound

NOW = int(time.time() * 1000) - 1_000


class Table:
    def __init__(self) -> None:
        self.rows: dict = {}

    def get(self, user_id: str, partition: int):
        return self.rows.get(user_id)


class Context:
    def of(self, user_id: str, partition: int, now_ms: int):
        return preferences.effective(None, user_id), False


class Step:
    """What ``_decide_event`` asks of a batch: the user's state, whether it may be changed in place, and
    ``apply``, which records what was kept."""

    def __init__(self) -> None:
        self.state_of: dict = {}
        self.kept: list[Outcome] = []

    def state(self, user_id: str, partition: int):
        return self.state_of.get(user_id)

    def owned(self, user_id: str) -> bool:
        return True

    def apply(self, user_id: str, partition: int, out: Outcome, express: bool = False) -> None:
        self.kept.append(out)
        self.state_of[user_id] = out.state


class Msg:
    topic, partition, offset, headers, key = "h.events", 0, 7, None, b"u1"

    def __init__(self, timestamp: float | None = None) -> None:
        self.timestamp = timestamp


def pipeline() -> Pipeline:
    p = Pipeline.__new__(Pipeline)
    p.context = Context()  # type: ignore[assignment]
    p.config = policy_config(Settings())
    return p


def critical(**over) -> dict:
    base = {"event_id": "e1", "user_id": "u1", "type": "SECURITY", "priority": "CRITICAL", "title": "t", "body": "b",
            "data": {}, "occurred_at": NOW, "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None}
    return {**base, **over}


def test_an_outcome_due_for_the_tick_is_not_kept_and_one_due_later_is():
    scheduled = critical(deliver_after=NOW + 500)  # held until NOW + 500: due then
    step = Step()
    assert not pipeline()._decide_event(step, Msg(), NOW, scheduled, express=True, until=NOW + 1_000)  # type: ignore[arg-type]
    assert step.kept == [] and step.state_of == {}
    assert pipeline()._decide_event(step, Msg(), NOW, scheduled, express=True, until=NOW + 100)  # type: ignore[arg-type]
    assert len(step.kept) == 1 and due_time(step.kept[0].state) == NOW + 500


def test_without_a_tick_the_outcome_is_kept_whatever_it_makes_due():
    step = Step()
    assert pipeline()._decide_event(step, Msg(), NOW, critical(deliver_after=NOW + 500), express=True)  # type: ignore[arg-type]
    assert len(step.kept) == 1


def test_a_tick_can_release_at_most_at_its_own_time_and_without_one_at_any():
    assert _tick_bound(Msg(timestamp=1_800_000_000.25)) == 1_800_000_000_250
    assert _tick_bound(Msg(timestamp=None)) > NOW * 1_000


class Outputs:
    def encode(self, out: Outcome) -> list:
        return [(f"delivery.{r['channel']}", None, b"r") for r in out.requests] + [("decisions", None, b"d")]


class Outbox:
    def __init__(self) -> None:
        self.expressed: list[str] = []
        self.sent: list[str] = []

    def express(self, topic, key, value) -> None:
        self.expressed.append(topic)

    def send(self, topic, key, value, source=None) -> None:
        self.sent.append(topic)


class Committing:
    """A batch whose commit takes until ``done`` is set; it read ``busy``."""

    def __init__(self, users: set[str]) -> None:
        self.users = users
        self.done = asyncio.Event()

    async def commit(self) -> None:
        await self.done.wait()


def lane_pipeline() -> Pipeline:
    p = pipeline()
    p.settings = Settings(partitions=4)
    p.watcher = SimpleNamespace(inbox=deque(), epoch=1)  # type: ignore[assignment]
    p.lane = Lane()
    p.clock = SimpleNamespace(due_of=lambda user, partition: None, reindex=lambda *a: None)  # type: ignore[assignment]
    p.states, p.outputs, p.outbox = Table(), Outputs(), Outbox()  # type: ignore[assignment]
    p._ticking, p._tick_until, p._early = Counter(), {}, None
    p.metrics = WorkerMetrics()
    return p


def test_while_a_batch_commits_the_lane_decides_into_the_next_step_but_not_for_its_users():
    p = lane_pipeline()
    events = {}
    for offset, user in ((10, "u-busy"), (11, "u1")):
        partition = home_partition(user.encode(), 4)
        msg = SimpleNamespace(topic="h.events", partition=partition, offset=offset, headers=None, key=user.encode(),
                              timestamp=NOW / 1000)
        events[user] = (partition, offset, msg, critical(user_id=user, event_id=f"e{offset}"))
    for user, (partition, offset, msg, event) in events.items():
        p.lane.seen(partition, offset, user, Candidate(msg, event, time.monotonic() - 0.2))  # read 0.2 s ago
        p.lane.taken(partition, offset - 1)

    async def scenario() -> None:
        batch = Committing({"u-busy"})
        task = asyncio.ensure_future(p._commit_expressing(batch))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not task.done()
        assert p.outbox.expressed and not p.outbox.sent  # u1's requests at once, its decision held
        assert p._early is not None and "u1" in p._early.users and "u-busy" not in p._early.users
        assert [key[1] for key in p.lane.waiting] == [10]  # u-busy waits for the commit
        batch.done.set()
        await task

    asyncio.run(scenario())
    p._early.begin()
    assert p.outbox.sent == ["decisions"]
    # an event decided ahead is timed from when the reader read it (u1's, 0.2 s before); u-busy's still waits
    waits = p.metrics.registry.get_sample_value
    assert waits("herald_worker_critical_wait_seconds_count") == 1
    assert waits("herald_worker_critical_wait_seconds_bucket", {"le": "0.1"}) == 0
    assert waits("herald_worker_critical_wait_seconds_sum") >= 0.2


def run_pipeline(events: dict[int, dict]) -> Pipeline:
    """A lane pipeline whose codec reads each record's value as the offset of one of ``events``."""
    p = lane_pipeline()
    p.codec = SimpleNamespace(schema_id_of=lambda value: 1, registry=SimpleNamespace(cached=lambda i: True),  # type: ignore[assignment]
                              decode=lambda value, schema: dict(events[int(value)]))
    return p


def record(user: str, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="h.events", partition=home_partition(user.encode(), 4), offset=offset, headers=None,
                           key=user.encode(), timestamp=NOW / 1000, value=str(offset).encode())


def test_a_critical_event_goes_ahead_with_its_users_earlier_records_decided_first_in_order():
    normal = critical(user_id="u1", event_id="e10", priority="NORMAL", channels=["INAPP"], batchable=False)
    urgent = critical(user_id="u1", event_id="e11", channels=["PUSH"])
    p = run_pipeline({10: normal})
    partition = home_partition(b"u1", 4)
    p.lane.seen(partition, 10, "u1", record=Candidate(record("u1", 10), None, time.monotonic()))
    p.lane.seen(partition, 11, "u1", Candidate(record("u1", 11), urgent, time.monotonic()))
    p.lane.taken(partition, 9)
    step = RealStep(p.states, p.outputs, p.outbox, p.clock.reindex)  # type: ignore[arg-type]
    p.express(step)
    # the NORMAL event first, its request and decision with the batch; then the CRITICAL one's request at once
    assert p.outbox.sent == ["delivery.INAPP", "decisions", "decisions"] and p.outbox.expressed == ["delivery.PUSH"]
    assert sum(step.decisions.values()) == 2
    assert not p.lane.waiting and p.lane.ready({}) == []
    p.lane.seen(partition, 12, "u1", Candidate(record("u1", 12), critical(user_id="u1", event_id="e12"), time.monotonic()))
    assert [(offset, earlier) for _, offset, _, _, _, earlier in p.lane.ready({})] == [(12, [])]  # nothing holds it


def test_when_an_earlier_record_cannot_go_ahead_its_users_critical_event_is_left_to_the_pipeline():
    bad = critical(user_id="u1", event_id="e10", priority="NORMAL", type="")  # does not validate
    p = run_pipeline({10: bad})
    partition = home_partition(b"u1", 4)
    p.lane.seen(partition, 10, "u1", record=Candidate(record("u1", 10), None, time.monotonic()))
    p.lane.seen(partition, 11, "u1", Candidate(record("u1", 11), critical(user_id="u1", event_id="e11"), time.monotonic()))
    p.lane.taken(partition, 9)
    step = RealStep(p.states, p.outputs, p.outbox, p.clock.reindex)  # type: ignore[arg-type]
    p.express(step)
    assert p.outbox.sent == [] and p.outbox.expressed == []  # neither decided: the pipeline reads both
    assert sum(step.decisions.values()) == 0


def decided_in_order(due_of) -> tuple[list, int]:
    """A batch's rest (x1's event on partition 0, u5's on partition 3, a tick of each) decided while a CRITICAL
    event of u1 (partition 0) waits in the lane: what was decided, in order, as (topic, offset, requests sent
    at once before it), and the requests sent at once in all."""
    p = run_pipeline({})
    p.events_topic = "h.events"
    p.clock = SimpleNamespace(due_of=due_of, reindex=lambda *a: None)  # type: ignore[assignment]
    until = NOW + 1_000
    p._ticking, p._tick_until = Counter({0: 1, 3: 1}), {0: until, 3: until}
    p.lane.seen(0, 40, "u1", Candidate(record("u1", 40), critical(user_id="u1", event_id="e40"), time.monotonic()))
    p.lane.taken(0, 39)

    def tick(partition: int, offset: int) -> SimpleNamespace:
        return SimpleNamespace(topic="h.ticks", partition=partition, offset=offset, headers=None, key=b"tick",
                               timestamp=until / 1000, value=b"")

    records = [SimpleNamespace(message=msg)
               for msg in (record("x1", 30), record("u5", 31), tick(0, 3), record("u5", 32), tick(3, 4))]
    items = [(0, "x1", "LOW"), (3, "u5", "LOW"), (0, None, None), (3, "u5", "LOW"), (3, None, None)]
    order: list = []
    p.decide = lambda step, msg, now_ms, event, express=False: order.append(  # type: ignore[method-assign]
        (msg.topic, msg.offset, len(p.outbox.expressed)))
    step = RealStep(p.states, p.outputs, p.outbox, p.clock.reindex)  # type: ignore[arg-type]
    step.between = lambda: p.express(step)
    p._decide_rest(step, records, [(NOW, {}) for _ in records], items, [0, 1, 2, 3, 4], lane=True)  # type: ignore[arg-type]
    return order, len(p.outbox.expressed)


def test_a_tick_that_holds_back_the_lane_is_decided_ahead_of_the_events_read_before_it():
    order, expressed = decided_in_order(lambda user, partition: NOW)  # u1 is due before the ticks: they may release it
    # after x1's event, partition 0's tick goes ahead of u5's event; then u1's CRITICAL event goes, before u5's
    assert expressed > 0
    assert order == [("h.events", 30, 0), ("h.ticks", 3, 0), ("h.events", 31, expressed), ("h.events", 32, expressed),
                     ("h.ticks", 4, expressed)]


def test_a_tick_that_holds_nothing_back_keeps_its_place():
    order, expressed = decided_in_order(lambda user, partition: NOW + 5_000)  # due after the ticks: u1 goes at once
    assert [(topic, offset) for topic, offset, _ in order] == [("h.events", 30), ("h.events", 31), ("h.ticks", 3),
                                                               ("h.events", 32), ("h.ticks", 4)]
    assert expressed > 0 and order[1][2] == expressed  # u1's went at the lane's first look, after x1's event


def test_the_lane_waits_for_a_partition_s_tick_while_it_holds_back_an_event_there():
    p = run_pipeline({})
    due = {"u1": NOW}
    p.clock = SimpleNamespace(due_of=lambda user, partition: due.get(user), reindex=lambda *a: None)  # type: ignore[assignment]
    p._ticking, p._tick_until = Counter({0: 1}), {0: NOW + 1_000}
    p.lane.seen(0, 40, "u1", Candidate(record("u1", 40), critical(user_id="u1", event_id="e40"), time.monotonic()))
    p.lane.taken(0, 39)
    step = RealStep(p.states, p.outputs, p.outbox, p.clock.reindex)  # type: ignore[arg-type]
    p.express(step)
    assert p._lane_waits_for(0) and not p._lane_waits_for(1)  # u1 is due before partition 0's tick
    due["u1"] = NOW + 5_000
    p.express(step)
    assert not p.lane.waiting and not p._lane_waits_for(0) and p.outbox.expressed  # due after it: u1's went
