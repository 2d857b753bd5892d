"""The outbox's transactions on the real broker (``HERALD_EXACTLY_ONCE``): a batch's outputs are seen only once
committed, and a worker that takes a partition over fences the previous owner, whose late commit fails
(the zombie that wakes up after its partitions moved writes nothing)."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from herald.settings import Settings
from streams.outbox import Outbox

pytestmark = pytest.mark.integration


def _committed_values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"eo-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    try:
        for _ in range(20):
            out += [m.value() for m in consumer.consume(100, 0.5) if not m.error()]
    finally:
        consumer.close()
    return out


def test_a_fenced_owner_cannot_commit_and_only_committed_outputs_are_read(stack, unique):
    settings = Settings.from_env()
    topic = f"{unique}.eo"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    zombie = Outbox(settings, transactional_id=f"{unique}-app")
    owner = Outbox(settings, transactional_id=f"{unique}-app")

    async def scenario() -> None:
        zombie.claim({0})
        zombie.send(topic, b"k", b"from-the-zombie", 0, source=0)
        zombie.send(topic, b"k", b"aborted-with-it", 0, source=0)
        owner.claim({0})  # the new owner of partition 0: fences the zombie's producer
        owner.send(topic, b"k", b"from-the-owner", 0, source=0)
        await owner.commit()
        with pytest.raises(KafkaException):
            await zombie.commit()
        plain = Outbox(settings)  # not exactly-once: no transaction, flushed
        plain.send(topic, b"k", b"plain", 0, source=0)
        await plain.commit()

    asyncio.run(scenario())
    assert _committed_values(settings.kafka_bootstrap, topic) == [b"from-the-owner", b"plain"]


def test_once_a_claim_returns_the_previous_owner_s_commit_is_in_the_committed_end_or_failed(stack, unique):
    """What the worker's restore relies on (``Pipeline.fence`` runs before it): the end of a partition as a
    reader of committed records sees it right after a claim (Kafka's last stable offset, which Faust's recovery
    reads) already holds a previous owner's transaction whose commit was under way, unless that commit failed.
    The commit starts in a thread a moment before the claim, at several spacings, to meet it mid-way."""
    import threading
    import time

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as AioTP

    settings = Settings.from_env()
    topic = f"{unique}.eo-end"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)

    async def committed_end() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed")
        await consumer.start()
        try:
            return (await consumer.end_offsets([AioTP(topic, 0)]))[AioTP(topic, 0)]
        finally:
            await consumer.stop()

    def log_end() -> int:
        consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": unique})
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        finally:
            consumer.close()

    def commit(producer: Any, result: dict[str, object]) -> None:
        try:
            producer.commit_transaction(30)
            result["committed"] = True
        except KafkaException as exc:
            result["committed"], result["error"] = False, exc

    outcomes: list[str] = []
    for attempt, delay in enumerate((-0.05, 0.0, 0.0, 0.002, 0.005, 0.01, 0.02)):
        previous = Outbox(settings, transactional_id=f"{unique}-app{attempt}")
        owner = Outbox(settings, transactional_id=f"{unique}-app{attempt}")
        previous.claim({0})
        for n in range(50):
            previous.send(topic, b"k", b"%d" % n, 0, source=0)
        producer = previous._txn[0]
        producer.flush(30)
        written_end = log_end()  # past the 50 records, marker not yet written
        result: dict[str, object] = {}
        committing = threading.Thread(target=commit, args=(producer, result))
        if delay < 0:  # the claim first: the commit that follows is fenced, and the transaction aborted
            owner.claim({0})
            committing.start()
        else:
            committing.start()
            time.sleep(delay)
            owner.claim({0})
        end = asyncio.run(committed_end())
        committing.join(60)
        assert "committed" in result, "the previous owner's commit never ended"
        # settled at the claim: nothing of the previous owner was still open or being committed (its marker,
        # commit or abort, the last offset), so a restore that reads up to ``end`` reads all it committed
        assert end == log_end() > written_end, f"attempt {attempt}: {result}"
        outcomes.append("committed" if result["committed"] else "fenced")
    assert outcomes[0] == "fenced" and len(outcomes) == 7
