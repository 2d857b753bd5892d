"""Records read again after their batch was written are skipped (``READ_UPTO``, ``streams.states``).

A worker can die after a batch's outputs and states are in Kafka and before Faust commits the batch's
offsets; the next owner reads those records again. A valid event then changed nothing already (its user's
``upto``), but a bad record was dead-lettered a second time and a misrouted one moved home again. Here the
whole topic is read again: the worker stops cleanly, the group's offsets are rewound to the start (what a
crash before the offset commit amounts to, for every record at once), and a new worker must write nothing:
no dead letter, decision, delivery request or moved copy.
"""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from herald.kafka import home_partition
from herald.topics import pipeline_group
from schemas.codec import Codec
from schemas.registry import Registry
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import make_event
from tests.integration.test_ingest_catalogue import consume_all

pytestmark = pytest.mark.integration


def _ends(bootstrap: str, topic: str, partitions: int) -> list[int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        return [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        probe.close()


def _record_ends(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """Each partition's offset after its last record: what a reader of it commits once it has read everything.
    Not the high watermark: a record moved home is written in a transaction, whose marker takes an offset."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        ends = []
        for p in range(partitions):
            end = 0
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            while (msg := consumer.poll(10)) is not None:
                if not msg.error():
                    end = msg.offset() + 1
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    break
            ends.append(end)
        return ends
    finally:
        consumer.close()


def _committed(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic}


def _rewind(admin: AdminClient, group: str, topic: str, partitions: int, timeout: float = 60) -> None:
    """The group's offsets on ``topic`` back to 0 (tried until the stopped worker has left the group)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
                group, [TopicPartition(topic, p, 0) for p in range(partitions)])])[group].result(10)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_records_read_again_after_their_batch_was_written_write_nothing_twice(stack, tmp_path):
    unique = f"again{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path, free_port()).prepare()
    settings = p.settings
    topic, parts = settings.topic("events"), settings.partitions
    bootstrap = settings.kafka_bootstrap
    codec = Codec(Registry(settings.schema_registry_url))
    subject = f"{topic}-value"
    user = f"{unique}-u"
    home = home_partition(user.encode(), parts)
    elsewhere = (home + 1) % parts
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):  # a bad record, then a valid event, on the user's partition
        producer.produce(topic, key=user.encode(), value=b"not avro %d" % i, partition=home)
        producer.produce(topic, key=user.encode(), partition=home,
                         value=codec.encode(subject, "NotificationEvent", make_event(user, i, priority="HIGH")))
    producer.produce(topic, key=user.encode(), partition=elsewhere,  # misrouted: moved home by the worker
                     value=codec.encode(subject, "NotificationEvent", make_event(user, 9, priority="HIGH")))
    assert producer.flush(10) == 0
    outputs = [settings.topic(t) for t in ("dlq", "decisions", "delivery.inapp", "delivery.email")]
    try:
        p.start("worker")
        dead = consume_all(bootstrap, settings.topic("dlq"), 3)
        finals = lambda msgs: sum(codec.decode(m.value(), "Decision")["final"] for m in msgs)  # noqa: E731
        decided = consume_all(bootstrap, settings.topic("decisions"), 4, count=finals)
        assert len(dead) == 3 and finals(decided) == 4, (len(dead), finals(decided))
        before = {t: sum(_ends(bootstrap, t, parts)) for t in outputs + [topic]}
        p.stop()

        admin = AdminClient({"bootstrap.servers": bootstrap})
        group = pipeline_group(settings)
        _rewind(admin, group, topic, parts)
        assert set(_committed(admin, group, topic).values()) == {0}
        events_end = _record_ends(bootstrap, topic, parts)
        p.start("worker")
        deadline = time.monotonic() + 90  # until the new worker has read (and committed) the whole topic again
        while any(_committed(admin, group, topic).get(n, -1) < end for n, end in enumerate(events_end)):
            assert time.monotonic() < deadline, (_committed(admin, group, topic), events_end)
            time.sleep(0.5)
        time.sleep(3)  # anything written twice would be in by now
        after = {t: sum(_ends(bootstrap, t, parts)) for t in outputs + [topic]}
        assert after == before, "records read again wrote something twice"
        assert "were written before" in p.log("worker").read_text()
    finally:
        p.stop()
