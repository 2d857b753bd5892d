"""Helpers for the API's live tests: an app on a test's own topics, tokens, and reading a topic back."""
from __future__ import annotations

import time
import uuid
from datetime import datetime

from confluent_kafka import Consumer

from api import auth
from herald.settings import Settings
from schemas.codec import Codec
from schemas.registry import Registry

SECRET = "live-api-test-" + "k" * 40


def bearer(user: str, admin: bool = False) -> dict:
    return {"Authorization": f"Bearer {auth.mint(SECRET, user, admin=admin)}"}


def read_topic(settings: Settings, name: str, want, timeout: float = 30) -> list[tuple[str, dict | None]]:
    """(key, decoded value) of ``settings.topic(name)`` from the start until ``want(records)`` is true."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    codec = Codec(Registry(settings.schema_registry_url))
    consumer.subscribe([settings.topic(name)])
    records: list[tuple[str, dict | None]] = []
    deadline = time.monotonic() + timeout
    try:
        while not want(records) and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error():
                    continue
                value = None if msg.value() is None else codec.decode(msg.value(), None)
                if value is not None:  # timestamp-millis fields back to epoch ms, as the API answers them
                    value = {k: int(v.timestamp() * 1000) if isinstance(v, datetime) else v for k, v in value.items()}
                records.append((msg.key().decode(), value))
    finally:
        consumer.close()
    return records


async def aread_topic(settings: Settings, name: str, want, timeout: float = 30) -> list[tuple[str, dict | None]]:
    """:func:`read_topic` off the event loop, so an in-process API keeps serving meanwhile."""
    import asyncio

    return await asyncio.to_thread(read_topic, settings, name, want, timeout)
