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

from confluent_kafka import KafkaException

from herald.kafka import make_producer, produce
from herald.settings import Settings

log = logging.getLogger("herald.outbox")


# The largest record the outbox sends: the states' changelog is created to take records this large, so a
# user's state a little over the usual 1 MB record limit is still written rather than failing the batch.
MAX_RECORD_BYTES = 8 * 1024 * 1024


class Outbox:
    def __init__(self, bootstrap: "str | Settings", linger_ms: int = 20) -> None:
        self._producer = make_producer(bootstrap, **{
            "linger.ms": linger_ms,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "message.max.bytes": MAX_RECORD_BYTES,
            "message.timeout.ms": 0,
        })
        self._failed: list[str] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             headers: list | None = None, on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        """Queue one record; ``on_delivery(err, msg)`` replaces the default report (which notes failures:
        a replacement must call ``failed`` for its errors)."""
        produce(self._producer, topic, value, key, partition=partition, headers=headers,
                on_delivery=on_delivery or self._delivered)

    def _delivered(self, err, msg) -> None:  # noqa: ANN001
        if err is not None:
            self.failed(f"{msg.topic()}: {err}")

    def failed(self, what: str) -> None:
        """Note an output that could not be delivered: the next ``flush`` raises."""
        self._failed.append(what)

    async def flush(self) -> None:
        """Wait until every queued output is acknowledged by the broker (without blocking the loop)."""
        self._producer.poll(0)
        remaining = 0
        if len(self._producer):
            remaining = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 3600)
        if remaining or self._failed:  # failures reported before this flush count too
            failed, self._failed = self._failed, []
            raise KafkaException(f"{remaining} outputs not delivered; failures: {failed[:5]}")
