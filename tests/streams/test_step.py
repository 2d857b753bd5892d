"""The batch transaction's rules, without a broker: an outcome is encoded before anything of it is kept,
a failure reported by the producer is never forgotten, and a batch that fails as a whole stops the worker."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from confluent_kafka import KafkaException

from agents.policy import Outcome
from streams.outbox import Outbox
from streams.step import Step


class Table:
    """The states as the step sees them: get and write (the real one is RocksDB + changelog)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {"u": {"v": 1}}
        self.written: list = []

    def get(self, user_id: str, partition: int) -> dict | None:
        return self.rows.get(user_id)

    def write(self, changes: list) -> int:
        self.written.extend(changes)
        return len(changes)

    def apply(self) -> None:
        self.applied = list(self.written)

    def persist_offsets(self) -> None:
        pass


class RefusingOutputs:
    def encode(self, out: Outcome) -> list:
        raise ValueError("the registry refused the subject")


def test_an_outcome_that_cannot_be_encoded_changes_no_state_and_queues_nothing():
    table, reindexed = Table(), []
    outbox = Outbox("127.0.0.1:1")
    step = Step(table, RefusingOutputs(), outbox, lambda *a: reindexed.append(a))  # type: ignore[arg-type]
    before = step.state("u", 0)
    with pytest.raises(ValueError):
        step.apply("u", 0, Outcome({"v": 2}, decisions=[{"user_id": "u"}]))
    assert step.state("u", 0) is before and reindexed == []
    asyncio.run(step.commit())
    assert table.written == [], "nothing to write: the state the event would have made was not kept"


def test_a_failure_reported_before_a_flush_with_nothing_queued_still_raises():
    outbox = Outbox("127.0.0.1:1")
    outbox.failed("herald.decisions: broker refused")
    with pytest.raises(KafkaException):
        asyncio.run(outbox.flush())
    asyncio.run(outbox.flush())  # reported once: the next flush is clean


def test_a_batch_that_fails_as_a_whole_stops_the_process():
    from streams.worker import EXIT_UNWRITTEN, Pipeline

    stopped: list[int] = []

    class Halt(Exception):
        pass

    def fatal(code: int) -> None:
        stopped.append(code)
        raise Halt

    async def failing() -> None:
        raise KafkaException("outputs not delivered")

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.fatal = fatal
    with pytest.raises(Halt):
        asyncio.run(pipeline.guarded("a batch", failing()))
    assert stopped == [EXIT_UNWRITTEN]


def test_states_reach_rocksdb_only_after_the_outbox_committed():
    """The order that makes a killed batch harmless: outputs and changelog committed, then RocksDB."""
    calls: list[str] = []

    class Outbox:
        exactly_once = True

        def send(self, *args, **kwargs) -> None:
            calls.append(f"send source={kwargs.get('source')}")

        async def commit(self) -> None:
            calls.append("commit")

    class States(Table):
        def write(self, changes: list) -> int:
            calls.append("changelog")
            return super().write(changes)

        def apply(self) -> None:
            calls.append("rocksdb")

        def persist_offsets(self) -> None:
            calls.append("offsets")

    class Outputs:
        def encode(self, out: Outcome) -> list:
            return [("herald.decisions", b"u", b"d")]

    step = Step(States(), Outputs(), Outbox(), lambda *a: None)  # type: ignore[arg-type]
    step.apply("u", 3, Outcome({"v": 2, "dedup": {"k": ["e", 1]}}))
    asyncio.run(step.commit())
    assert calls == ["send source=3", "changelog", "commit", "rocksdb", "offsets"]


def test_a_batch_cancelled_before_it_was_written_stops_the_process_before_faust_acks_it():
    """Faust stops an agent by cancelling it and then acks what it was handed: the worker must not live to
    commit those offsets for a batch whose outputs were never written."""
    from streams.worker import EXIT_UNWRITTEN, Pipeline

    stopped: list[int] = []
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.fatal = stopped.append

    async def scenario() -> None:
        started = asyncio.Event()

        async def batch() -> None:
            started.set()
            await asyncio.sleep(30)  # waiting for the broker, say

        task = asyncio.ensure_future(pipeline.guarded("a batch", batch()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert stopped == [EXIT_UNWRITTEN]


def test_each_partition_read_gets_a_read_upto_mark_that_an_older_worker_takes_for_an_empty_state():
    """The mark is written with the batch's states; a worker of a release without it (a rolling upgrade)
    indexes every stored value with ``policy.next_due`` and must find nothing due and nothing kept."""
    from agents import policy
    from streams.states import READ_UPTO

    table = Table()
    step = Step(table, RefusingOutputs(), Outbox("127.0.0.1:1"), lambda *a: None)  # type: ignore[arg-type]
    step.read_upto.update({3: 41, 1: 7})
    asyncio.run(step.commit())
    marks = {partition: value for key, value, partition in table.written if key == READ_UPTO}
    assert marks == {3: {"read_upto": 41}, 1: {"read_upto": 7}}
    for mark in marks.values():
        assert policy.next_due(mark) is None and policy.is_empty(mark)


def test_a_record_handed_over_again_after_its_batch_was_written_is_skipped_in_the_same_process():
    from streams.worker import Pipeline

    class States:
        def read_upto(self, partition: int) -> int | None:
            return {3: 4}.get(partition)

    class Written:
        read_upto = {2: 15, 3: 9}

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.states = States()
    pipeline._read_upto = {2: 10}  # partition 3: cleared by a rebalance while the batch was being written
    pipeline.note_written(Written())  # type: ignore[arg-type]
    assert pipeline.written_before(2, 15) and not pipeline.written_before(2, 16)
    assert pipeline.written_before(3, 4) and not pipeline.written_before(3, 5), "read from RocksDB, as stored"


def test_a_record_handed_over_twice_in_one_batch_is_read_once():
    """Just after a recovery, the seek to the committed offsets can put records fetched before it into the
    same batch again (the x10 chaos run: bad records dead-lettered twice in one transaction)."""
    from types import SimpleNamespace

    from streams.worker import Pipeline

    read: list[tuple[int, int]] = []

    class Intake:
        async def event(self, msg, now_ms):  # noqa: ANN001, ANN201
            read.append((msg.partition, msg.offset))
            return None  # dead-lettered, say

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.events_topic = "events"
    pipeline.intake = Intake()
    pipeline.clock = SimpleNamespace(note_event=lambda *a: None)
    pipeline.states = SimpleNamespace(read_upto=lambda partition: 3)  # written before: up to offset 3
    pipeline._read_upto = {}
    step = Step(Table(), RefusingOutputs(), Outbox("127.0.0.1:1"), lambda *a: None)  # type: ignore[arg-type]

    class Event:  # what Faust hands the agent: the record as ``message``
        def __init__(self, partition: int, offset: int) -> None:
            self.message = SimpleNamespace(topic="events", partition=partition, offset=offset, timestamp=1.0,
                                           headers=None)

    async def batch() -> None:
        for partition, offset in [(1, 3), (1, 5), (1, 6), (2, 5), (1, 5), (1, 6), (2, 5), (1, 7)]:
            await pipeline.read(step, Event(partition, offset))

    asyncio.run(batch())
    assert read == [(1, 5), (1, 6), (2, 5), (1, 7)]
    assert step.read_upto == {1: 7, 2: 5}


class StoredTable(Table):
    """States kept as bytes and decoded at every read, as RocksDB and orjson give them."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = {"u": orjson.dumps({"v": 2, "dedup": {"id:e0": ["e0", 10**13]}})}

    def get(self, user_id: str, partition: int) -> dict | None:
        raw = self.raw.get(user_id)
        return None if raw is None else orjson.loads(raw)


class Encoding:
    def encode(self, out: Outcome) -> list:
        return []


def test_a_state_changed_in_place_then_refused_is_read_again_from_the_table():
    table = StoredTable()
    step = Step(table, RefusingOutputs(), Outbox("127.0.0.1:1"), lambda *a: None)  # type: ignore[arg-type]
    state = step.state("u", 0)
    assert step.owned("u"), "the table's own state, unchanged in this batch: the policy may change it in place"
    state["dedup"]["id:e1"] = ["e1", 10**13]  # what the policy did in place before the encoding failed
    with pytest.raises(ValueError):
        step.apply("u", 0, Outcome(state, decisions=[{"user_id": "u"}]))
    again = step.state("u", 0)
    assert again is not state and again == orjson.loads(table.raw["u"]), "read again: the change is not kept"
    asyncio.run(step.commit())
    assert table.written == []


def test_only_a_users_first_change_in_a_batch_is_made_in_place():
    table = StoredTable()
    step = Step(table, Encoding(), Outbox("127.0.0.1:1"), lambda *a: None)  # type: ignore[arg-type]
    state = step.state("u", 0)
    step.apply("u", 0, Outcome({**state, "upto": 1}))
    assert not step.owned("u"), "the batch's state now holds a change the table lacks: a failure could not undo it"
    changed = step.state("u", 0)
    step.spoilt("u")  # a failure on the user's second record
    assert step.state("u", 0) is changed and changed["upto"] == 1, "the first record's change stands"
    assert not step.owned("nobody") and step.state("nobody", 0) is None and not step.owned("nobody")


def test_a_decision_that_fails_after_changing_the_state_in_place_keeps_nothing_of_it(monkeypatch):
    """The pipeline hands the policy the table's state to change in place; a bug half-way through must not
    leave that half-changed state to be written with the batch: the record is dead-lettered, the state read again."""
    from types import SimpleNamespace

    from agents import policy
    from streams.worker import Pipeline

    def on_event(state, event, *args, owned=False, **kwargs):
        assert owned, "the table's own state, first change in the batch"
        state["dedup"]["id:e1"] = ["e1", 10**13]
        raise ValueError("a bug in the policy")

    monkeypatch.setattr(policy, "on_event", on_event)
    dead: list = []
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.context = SimpleNamespace(of=lambda user_id, partition, now_ms: ({}, False))
    pipeline.config = policy.PolicyConfig()
    pipeline.intake = SimpleNamespace(dead_letter=lambda msg, reason, text, where: dead.append(reason))
    table = StoredTable()
    step = Step(table, Encoding(), Outbox("127.0.0.1:1"), lambda *a: None)  # type: ignore[arg-type]
    msg = SimpleNamespace(topic="t.events", partition=0, offset=5, headers=None)
    pipeline.decide(step, msg, 10**12, {"user_id": "u", "event_id": "e1"})
    assert dead == ["INTERNAL"]
    assert step.state("u", 0) == orjson.loads(table.raw["u"]), "the half-changed state is not the batch's"
    asyncio.run(step.commit())
    assert table.written == [] or all(user != "u" for user, *_ in table.written)


def test_an_express_outcome_sends_its_requests_at_once_and_keeps_its_decisions_in_the_batch():
    """``apply(..., express=True)``: the requests (``Outputs.encode`` puts them first) go to ``Outbox.express``,
    outside the transaction; the decisions are queued with the batch, as without it."""

    class Recording:
        exactly_once = True

        def __init__(self) -> None:
            self.calls: list = []

        def express(self, topic: str, key: bytes, value: bytes) -> None:
            self.calls.append(("express", topic))

        def send(self, topic: str, key: bytes, value: bytes, source: int | None = None) -> None:
            self.calls.append(("batch", topic))

    class TwoOutputs:
        def encode(self, out: Outcome) -> list:
            return [("herald.delivery.push", b"u", b"r")] * len(out.requests) + [("herald.decisions", b"u", b"d")]

    outbox = Recording()
    step = Step(Table(), TwoOutputs(), outbox, lambda *a: None)  # type: ignore[arg-type]
    request = {"channel": "PUSH", "kind": "SINGLE"}
    step.apply("u", 0, Outcome({"v": 2}, decisions=[{"outcome": "ROUTED", "final": True}], requests=[request]),
               express=True)
    assert outbox.calls == [("express", "herald.delivery.push"), ("batch", "herald.decisions")]
    assert step.expressed == 1
    outbox.calls.clear()
    step.apply("u", 0, Outcome({"v": 3}, decisions=[{"outcome": "ROUTED", "final": True}], requests=[request]))
    assert outbox.calls == [("batch", "herald.delivery.push"), ("batch", "herald.decisions")]


def test_a_step_begun_while_a_batch_commits_holds_its_transactions_records_until_it_begins():
    """The CRITICAL lane decides into the next batch's step while the previous one commits: its delivery
    requests go at once, everything else waits for ``begin`` (after that commit)."""
    calls: list[tuple] = []

    class Outbox:
        def send(self, topic, key, value, source=None) -> None:
            calls.append(("send", topic, source))

        def express(self, topic, key, value) -> None:
            calls.append(("express", topic))

    class Outputs:
        def encode(self, out: Outcome) -> list:  # the requests first, as ``Outputs.encode`` puts them
            return [("herald.delivery.push", b"u", b"r"), ("herald.decisions", b"u", b"d")]

    step = Step(Table(), Outputs(), Outbox(), lambda *a: None, holding=True)  # type: ignore[arg-type]
    step.apply("u", 3, Outcome({"v": 2}, requests=[{"channel": "PUSH", "kind": "SINGLE"}]), express=True)
    assert calls == [("express", "herald.delivery.push")]
    assert "u" in step.users and "x" not in step.users
    step.begin()
    assert calls[1:] == [("send", "herald.decisions", 3)]
    step.apply("u", 3, Outcome({"v": 3}))  # once begun, records go straight to the outbox
    assert calls[2:] == [("send", "herald.delivery.push", 3), ("send", "herald.decisions", 3)]


def test_a_claim_opens_the_partitions_transactional_producers_together_and_keeps_each():
    """Each open waits on the transaction coordinator (longest when it must first end a previous owner's
    transaction), and the tables' restore waits for the claim: the opens run at once, not one after another.
    The fake open below returns only once every partition's open has begun."""
    import threading

    from streams.outbox import Outbox

    outbox = Outbox("127.0.0.1:1", transactional_id="test-claim")
    together = threading.Barrier(4, timeout=10)
    opened: list[int] = []

    def open_one(source: int) -> object:
        together.wait()  # raises BrokenBarrierError unless all four are opening at once
        opened.append(source)
        return f"producer-{source}"

    outbox._new_producer = open_one  # type: ignore[method-assign]
    outbox.claim([3, 1, 2, 0])
    assert sorted(opened) == [0, 1, 2, 3]
    assert outbox._txn == {p: f"producer-{p}" for p in range(4)}


def test_a_claim_keeps_the_producers_that_opened_when_another_open_fails():
    """An open that fails fails the claim (the worker stops on it), but the producers the other threads opened
    already hold their partitions' ids: they are kept, so the outbox can still close them."""
    from streams.outbox import Outbox

    outbox = Outbox("127.0.0.1:1", transactional_id="test-claim-fails")

    def open_one(source: int) -> object:
        if source == 2:
            raise RuntimeError("coordinator away")
        return f"producer-{source}"

    outbox._new_producer = open_one  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="coordinator away"):
        outbox.claim([0, 1, 2, 3])
    assert outbox._txn == {0: "producer-0", 1: "producer-1", 3: "producer-3"}
