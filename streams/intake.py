"""Intake: from a raw record to what the policy takes, or to where the record belongs instead.

- A record that does not decode or validate goes to the dead-letter topic, byte for byte, with the
  contract's headers saying why (cut to a size a producer can send, with a header saying so: a dead
  letter must never fail, or the records behind it would be lost with it).
- A record that a producer's partitioner put on another partition than its user's home (Kafka's default
  partitioner on the key) is moved there first: a user's state lives on that partition only.
- A schema id not seen yet is looked up off the event loop, every new id of a batch at once (one
  look-up per id however many records carry it, misses remembered in a bounded cache), so a flood of
  records with random ids costs one round of look-ups, not one after another. While the registry cannot
  be reached the batch waits and asks again with a growing pause; the event is valid and is never
  dead-lettered for it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable

from agents.validate import ValidationError, validate_event
from herald import dlq
from herald.kafka import home_partition
from schemas.codec import Codec, DecodeError
from schemas.registry import RegistryUnavailable
from streams.outbox import Outbox

log = logging.getLogger("herald.intake")
MOVED_FROM = "herald.moved.from"  # header of a record moved to its home partition: where it was first read
FIRST_PAUSE_S = 0.5  # the first wait for a registry that cannot be reached; it doubles up to MAX_PAUSE_S
MAX_PAUSE_S = 30.0


class Intake:
    def __init__(self, codec: Codec, outbox: Outbox, dlq_topic: str, partitions: int,
                 on_dead_letter: Callable[[str, str], None] = lambda reason, stage: None,
                 batch_topics: Iterable[str] = ()) -> None:
        self.on_dead_letter = on_dead_letter  # (reason, stage), for the metrics
        self.batch_topics = frozenset(batch_topics)  # topics read in the pipeline's batches (see ``_source``)
        self.codec = codec
        self.outbox = outbox
        self.dlq_topic = dlq_topic
        self.partitions = partitions

    async def event(self, msg: Any, now_ms: int) -> dict | None:
        """The validated ``NotificationEvent`` of ``msg``; None when it was dead-lettered or moved home."""
        record = await self.decode(msg, "NotificationEvent", "ingest")
        if record is None:
            return None
        try:
            validate_event(record, msg.key, now_ms)
        except ValidationError as exc:
            self.dead_letter(msg, exc.reason, exc.message, "ingest")
            return None
        if self.misrouted(msg, record["user_id"].encode()):
            return None
        return record

    async def prepare(self, values: list[bytes | None]) -> None:
        """Resolve at once every schema id in ``values`` not resolved yet (waiting out an outage)."""
        registry = self.codec.registry
        ids = {i for i in map(self.codec.schema_id_of, values) if i is not None and not registry.cached(i)}
        if ids:
            await self._when_available(lambda: asyncio.gather(*(registry.ensure(i) for i in ids)))

    async def decode(self, msg: Any, schema: str, stage: str) -> dict | None:
        """``msg``'s value read as ``schema``; None when it was dead-lettered."""
        await self._when_available(lambda: self.codec.prepare(msg.value))
        try:
            return self.codec.decode(msg.value, schema)
        except DecodeError as exc:
            self.dead_letter(msg, exc.reason, exc.message, stage)
            return None

    async def _when_available(self, attempt: Callable[[], Awaitable[Any]]) -> None:
        pause = FIRST_PAUSE_S
        while True:
            try:
                await attempt()
                return
            except RegistryUnavailable as exc:
                log.warning("waiting %.1f s for the schema registry: %s", pause, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)

    def dead_letter(self, msg: Any, reason: str, message: str, stage: str) -> None:
        """Queue ``msg`` unchanged to the dead-letter topic with the reason in its headers."""
        headers = dlq.headers(reason, message, stage, msg.topic, msg.partition, msg.offset, list(msg.headers or []))
        value, headers = dlq.fit(msg.value, headers)
        self.outbox.send(self.dlq_topic, msg.key, value, None, headers, source=self._source(msg))
        self.on_dead_letter(reason, stage)

    def misrouted(self, msg: Any, key: bytes) -> bool:
        """Move ``msg`` to its user's home partition if it is not there; True if it was moved.

        The copy carries ``herald.moved.from`` (``<partition>:<offset>`` of the original), so that a second
        copy, written when a crash made the original be read and moved again, is known as one (``moved_from``)."""
        home = home_partition(key, self.partitions)
        if msg.partition == home:
            return False
        headers = [(k, v) for k, v in (msg.headers or []) if k != MOVED_FROM]
        headers.append((MOVED_FROM, f"{msg.partition}:{msg.offset}".encode()))
        self.outbox.send(msg.topic, key, msg.value, home, headers, source=self._source(msg))
        return True

    def _source(self, msg: Any) -> int | None:
        """The input partition whose batch ``msg``'s outputs belong to; None for a record read outside the
        pipeline's batches (preferences, presence), whose outputs need no transaction."""
        return msg.partition if msg.topic in self.batch_topics else None


def moved_from(headers: Any) -> tuple[int, int] | None:
    """The (partition, offset) a moved record was first read at, from its ``herald.moved.from`` header."""
    for key, value in headers or ():
        if key == MOVED_FROM and value:
            try:
                partition, offset = value.decode().split(":")
                return int(partition), int(offset)
            except (ValueError, UnicodeDecodeError):
                return None
    return None
