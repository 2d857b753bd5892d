"""The outbox's transactions on the real broker (``HERALD_EXACTLY_ONCE``): a batch's outputs are seen only once
committed, and a worker that takes a partition over fences the previous owner, whose late commit fails
(the zombie that wakes up after its partitions moved writes nothing)."""
from __future__ import annotations

import asyncio
import uuid

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
