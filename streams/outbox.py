"""Where the pipeline's outputs go: a confluent-kafka producer, flushed before a batch's records are acked.

Faust commits offsets only of acked records, so flushing here first means an output is in Kafka before
the offset of the record that caused it can be committed: a crash loses nothing, it only makes the
worker read (and decide again, identically) the records after the last commit. librdkafka's produce
costs a few microseconds where an awaited aiokafka send costs tens, which is why the outputs do not go
through Faust's producer. Messages never time out in the queue (``message.timeout.ms`` 0): while the
broker is away the flush waits, and so does the batch, instead of dropping anything.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from confluent_kafka import KafkaException, Producer

log = logging.getLogger("herald.outbox")


class Outbox:
    def __init__(self, bootstrap: str, linger_ms: int = 20) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",  # Kafka's (Java) default: the same partition as Faust's producer
            "linger.ms": linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True,
            "message.timeout.ms": 0,
        })
        self._failed: list[str] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             headers: list | None = None, on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        """Queue one record; ``on_delivery(err, msg)`` replaces the default report (which notes failures:
        a replacement must call ``failed`` for its errors)."""
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery or self._delivered,
                                       **kwargs)
                return
            except BufferError:  # the local queue is full: let it drain, then try again
                self._producer.poll(0.05)

    def _delivered(self, err, msg) -> None:  # noqa: ANN001
        if err is not None:
            self.failed(f"{msg.topic()}: {err}")

    def failed(self, what: str) -> None:
        """Note an output that could not be delivered: the next ``flush`` raises."""
        self._failed.append(what)

    async def flush(self) -> None:
        """Wait until every queued output is acknowledged by the broker (without blocking the loop)."""
        self._producer.poll(0)
        if len(self._producer) == 0:
            return
        remaining = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 3600)
        if remaining or self._failed:
            failed, self._failed = self._failed, []
            raise KafkaException(f"{remaining} outputs not delivered; failures: {failed[:5]}")
