"""The API's Kafka writes: Avro records on Herald's topics, fire-and-forget or awaited until acknowledged.

One producer per API process (idempotent, ``murmur2_random`` like every Herald producer, so a record keyed
by user id lands on the user's partition). A daemon thread serves its delivery reports, so ``send`` waits
for the broker's acknowledgement without blocking the event loop, and ``publish`` costs no poll at the
caller. Encoding runs in a thread the first time a subject is seen (registering the schema is an HTTP call).
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from confluent_kafka import KafkaException

from herald.kafka import make_producer, produce
from herald.settings import Settings
from schemas.codec import Codec


class PublishError(RuntimeError):
    """The broker did not take a record (its reason is in the message, never the record)."""


class Outbox:
    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings, self.codec = settings, codec
        self.producer = make_producer(settings, linger_ms=5)
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="herald-api-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    async def encode(self, name: str, schema: str, record: dict) -> bytes:
        subject = f"{self.settings.topic(name)}-value"
        if subject not in self._known:
            value = await asyncio.get_running_loop().run_in_executor(None, self.codec.encode, subject, schema, record)
            self._known.add(subject)
            return value
        return self.codec.encode(subject, schema, record)

    async def publish(self, name: str, schema: str, key: str, record: dict) -> None:
        """Queue one record on topic ``name`` (without the prefix); do not wait for the broker."""
        produce(self.producer, self.settings.topic(name), await self.encode(name, schema, record), key.encode())

    async def send(self, name: str, schema: str, key: str, record: dict, timeout: float = 10.0) -> None:
        """Write one record and return once the broker acknowledged it; ``PublishError`` otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def report(err, msg) -> None:
            loop.call_soon_threadsafe(_settle, done, err)

        value = await self.encode(name, schema, record)
        try:
            produce(self.producer, self.settings.topic(name), value, key.encode(), on_delivery=report)
        except KafkaException as exc:
            raise PublishError(f"the broker refused the record: {exc.args[0].name()}") from None
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            raise PublishError("the broker did not acknowledge the record in time") from None

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, then close the producer: whoever still holds this outbox (a task's traceback,
        a test), librdkafka stops dialling the broker."""
        self._stop.set()
        self._thread.join(2)
        self.producer.flush(timeout)
        self.producer.close()


def _settle(done: asyncio.Future, err) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(PublishError(f"the broker did not take the record: {err.name()}"))


async def publish_then_store(request: Any, *, topic: str, schema: str, user_id: str, record: dict, last_sql: str,
                             upsert_sql: str, what: str) -> dict:
    """Publish a user's document (preferences, contacts) to its compacted topic, then store it in PostgreSQL,
    under a per-user lock so the topic and the table end with the same last write; ``updated_at`` is made to
    grow for the user even when clocks do not. A broker that does not acknowledge is a 503, nothing stored."""
    from api.http import OUTBOX, POOL, ApiError

    async with request.app[POOL].acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"herald.{topic}:{user_id}")
            last = await conn.fetchval(last_sql, user_id) or 0
            record["updated_at"] = max(int(time.time() * 1000), last + 1)
            try:
                await request.app[OUTBOX].send(topic, schema, user_id, record)
            except PublishError as exc:
                raise ApiError(503, "UNAVAILABLE", f"{what} not saved: {exc}") from None
            await conn.execute(upsert_sql, user_id, record, record["updated_at"])
    return record
