"""The loop every sink shares: consume a delivery topic in batches, deliver, report, then commit.

Offsets are committed only after the batch is delivered and its statuses are acknowledged, so a
crash means the batch is read again: at-least-once. Sinks are therefore idempotent on
``delivery_id`` (the in-app table and the delivery ledger refuse a second copy). A record that does
not decode goes to the dead-letter topic with its reason and the loop goes on.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from confluent_kafka import Consumer, KafkaError, Producer

from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from herald import dlq
from herald.settings import Settings
from herald.topics import delivery_topic

log = logging.getLogger("herald.sink")


@dataclass
class Outcome:
    delivery_id: str
    status: str  # SENT, FAILED, RETRYING, DEAD, SUPPRESSED
    provider: str
    attempt: int = 1
    error: str | None = None


Deliver = Callable[[list[dict]], Awaitable[list[Outcome]]]


class SinkRunner:
    def __init__(self, settings: Settings, channel: str, deliver: Deliver, batch_size: int = 500) -> None:
        self.settings = settings
        self.channel = channel
        self.deliver = deliver
        self.batch_size = batch_size
        self.topic = delivery_topic(settings, channel)
        self.codec = Codec(Registry(settings.schema_registry_url))
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-sink-{channel.lower()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,  # a killed sink's partitions move on after this
            "heartbeat.interval.ms": 2000,
        })
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5,
                                  "enable.idempotence": True})
        self.delivered = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.consumer.subscribe([self.topic])
        log.info("sink %s consuming %s", self.channel, self.topic)
        try:
            while not self._stop.is_set():
                messages = await loop.run_in_executor(None, self.consumer.consume, self.batch_size, 0.5)
                if messages:
                    await self.handle(messages)
        finally:
            self.consumer.close()
            self.producer.flush(10)

    async def handle(self, messages: list) -> None:
        requests = []
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error on %s: %s", self.topic, msg.error())
                continue
            try:
                requests.append(self.codec.decode(msg.value(), "DeliveryRequest"))
            except DecodeError as exc:
                self.producer.produce(self.settings.topic("dlq"), key=msg.key(), value=msg.value(), headers=dlq.headers(
                    exc.reason, exc.message, "sink", msg.topic(), msg.partition(), msg.offset(), msg.headers()))
        if requests:
            outcomes = await self.deliver(requests)
            now_ms = int(time.time() * 1000)
            status_topic = self.settings.topic("delivery.status")
            for o in outcomes:
                self.producer.produce(status_topic, key=o.delivery_id.encode(), value=self.codec.encode(
                    f"{status_topic}-value", "DeliveryStatus",
                    {"delivery_id": o.delivery_id, "channel": self.channel, "status": o.status, "attempt": o.attempt,
                     "provider": o.provider, "error": o.error, "at": now_ms}))
            self.delivered += sum(1 for o in outcomes if o.status == "SENT")
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(None, self.producer.flush, 30)
        if remaining:
            raise RuntimeError(f"{remaining} status records not acknowledged by Kafka; not committing")
        await loop.run_in_executor(None, lambda: self.consumer.commit(asynchronous=False))
