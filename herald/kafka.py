"""One way to make a confluent-kafka producer and to queue a record on it.

Every producer Herald makes partitions keys as Kafka's Java clients and Faust do (``murmur2_random``), so a
record keyed by a user id lands on that user's home partition whichever tool wrote it. ``produce`` waits
for room when librdkafka's local queue is full instead of raising ``BufferError`` at the caller.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

PARTITIONER = "murmur2_random"


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """The base configuration: Kafka's default partitioner, idempotence, a short linger."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "partitioner": PARTITIONER,
                              "enable.idempotence": True, "linger.ms": 5}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


def make_producer(bootstrap: str, **overrides: Any) -> Producer:
    """A producer with ``producer_config``; overrides use dots or underscores (``linger_ms=20``)."""
    return Producer(producer_config(bootstrap, **overrides))


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, *,
            partition: int | None = None, headers: list | None = None,
            on_delivery: Callable[[Any, Any], None] | None = None, timestamp: int | None = None) -> None:
    """Queue one record (``timestamp`` in ms; None: now), waiting (polling delivery reports) while the local
    queue is full."""
    kwargs: dict[str, Any] = {}
    if timestamp is not None:
        kwargs["timestamp"] = timestamp
    if partition is not None:
        kwargs["partition"] = partition
    if headers is not None:
        kwargs["headers"] = headers
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def home_partition(key: bytes, partitions: int) -> int:
    """Where a record keyed ``key`` belongs: Kafka's default (Java) partitioner, murmur2 of the key."""
    return _home(key, partitions)


@lru_cache(maxsize=65_536)
def _home(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
