"""The pipeline's feed (``streams.feed``) on the real broker: batches only while it holds partitions and Faust is
not rebalancing, a revocation waits for the batch in flight, offsets committed after each batch, and records
fetched across an assignment change read again rather than lost."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from herald.settings import Settings
from herald.topics import pipeline_group
from streams.feed import Feed, Record, held, next_offsets


def _record(topic: str, partition: int, offset: int) -> Record:
    msg = SimpleNamespace(topic=lambda: topic, partition=lambda: partition, offset=lambda: offset,
                          timestamp=lambda: (1, 1_700_000_000_123), key=lambda: b"k", value=lambda: b"v",
                          headers=lambda: None)
    return Record(msg)


def test_the_offsets_committed_after_a_batch_follow_the_last_record_of_each_partition():
    batch = [_record("e", 0, 5), _record("e", 1, 9), _record("t", 0, 2), _record("e", 0, 7), _record("e", 0, 6)]
    assert [(tp.topic, tp.partition, tp.offset) for tp in next_offsets(batch)] == [("e", 0, 8), ("e", 1, 10),
                                                                                  ("t", 0, 3)]
    assert batch[0].message is batch[0] and batch[0].timestamp == 1_700_000_000.123


def test_the_partitions_held_are_those_of_the_one_topic_faust_assigned():
    assigned = [SimpleNamespace(topic="p.preferences", partition=2), SimpleNamespace(topic="p.presence", partition=3),
                SimpleNamespace(topic="app-users-changelog", partition=1)]
    assert held(assigned, "p.preferences") == {2}


def _setup(unique: str, partitions: int = 2, per_partition: int = 5) -> tuple[Settings, str, str]:
    settings = Settings.from_env(app_id=f"{unique}-app", take_within_s=0.05)
    events, ticks = f"{unique}.events", f"{unique}-ticks"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in (events, ticks)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for p in range(partitions):
        for i in range(per_partition):
            producer.produce(events, value=b"%d" % i, partition=p)
    assert producer.flush(10) == 0
    return settings, events, ticks


def _committed(settings: Settings, events: str, partitions: int) -> list[int]:
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": pipeline_group(settings)})
    try:
        return [tp.offset for tp in probe.committed([TopicPartition(events, p) for p in range(partitions)], 10)]
    finally:
        probe.close()


async def _until(predicate, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.integration
def test_a_revocation_waits_for_the_batch_in_flight_whose_offsets_are_then_committed(stack, unique):
    settings, events, ticks = _setup(unique)
    rebalancing = [True]
    feed = Feed(settings, (events, ticks), lambda: rebalancing[0])
    seen: list[tuple[int, int]] = []
    release = asyncio.Event()

    async def handle(batch: list[Record]) -> None:
        seen.extend((r.partition, r.offset) for r in batch)
        await release.wait()

    async def scenario() -> None:
        runner = asyncio.ensure_future(feed.run(handle))
        feed.assign({0, 1})
        await asyncio.sleep(1.0)
        assert seen == []  # held, but Faust is still rebalancing (restoring the tables): no batch yet
        rebalancing[0] = False
        await _until(lambda: bool(seen))
        revoking = asyncio.ensure_future(feed.revoke())
        await asyncio.sleep(0.5)
        assert not revoking.done()  # the batch in flight is not written yet
        release.set()
        await asyncio.wait_for(revoking, 10)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())
    ends = {p: max(o for q, o in seen if q == p) + 1 for p, _ in seen}
    assert _committed(settings, events, 2) == [ends.get(0, -1001), ends.get(1, -1001)]


@pytest.mark.integration
def test_a_batch_that_fails_commits_no_offset_and_the_next_owner_reads_it_again(stack, unique):
    settings, events, ticks = _setup(unique, partitions=1, per_partition=20)
    feed = Feed(settings, (events, ticks), lambda: False)
    seen: list[int] = []
    first = asyncio.Event()

    async def handle(batch: list[Record]) -> None:
        if not first.is_set():  # the first batch fails, as a fenced commit would
            first.set()
            await asyncio.sleep(0.3)
            raise RuntimeError("fenced")
        seen.extend(r.offset for r in batch if r.topic == events)

    async def scenario() -> None:
        runner = asyncio.ensure_future(feed.run(handle))
        feed.assign({0})
        await first.wait()
        with pytest.raises(RuntimeError):
            await runner  # the pipeline stops the process on such a failure; nothing was committed
        again = Feed(settings, (events, ticks), lambda: False)  # the next owner
        runner = asyncio.ensure_future(again.run(handle))
        again.assign({0})
        await _until(lambda: len(seen) >= 20)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())
    assert sorted(seen) == list(range(20))
    assert _committed(settings, events, 1) == [20]


@pytest.mark.integration
def test_records_fetched_while_the_assignment_changes_are_handled_once(stack, unique):
    settings, events, ticks = _setup(unique, partitions=1, per_partition=20)
    settings = Settings.from_env(app_id=settings.app_id, take_within_s=2.0, take_max=100_000)  # a long fetch
    feed = Feed(settings, (events, ticks), lambda: False)
    seen: list[int] = []

    async def handle(batch: list[Record]) -> None:
        seen.extend(r.offset for r in batch if r.topic == events)

    async def scenario() -> None:
        runner = asyncio.ensure_future(feed.run(handle))
        feed.assign({0})
        await asyncio.sleep(0.5)  # the fetch has the records and waits for more
        await feed.revoke()
        feed.assign({0})
        await _until(lambda: len(seen) >= 20)
        await asyncio.sleep(2.5)  # a batch handed over twice would be in by now
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())
    assert sorted(seen) == list(range(20))
