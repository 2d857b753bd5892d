"""The pipeline's feed: its events and ticks, read in batches by a confluent-kafka consumer inside the Faust app.

Faust's stream path costs tens of microseconds per record in the worker's own thread, and aiokafka's fetcher
thread competes with it for the interpreter (``../shared/DESIGN.md``, "Measured"). librdkafka fetches in its
own threads and hands over a whole batch in one call. Faust keeps everything else: the group, the tables,
their changelogs and recovery, the preferences and presence agents, the timers.

What the feed owns, that Faust's stream did:

- **Assignment.** Faust's group decides which partition numbers this worker holds: its preferences and
  presence agents and its tables subscribe, and every Herald topic has the same number of partitions, so
  Faust's assignor gives a worker the same numbers on all of them (``held``). The feed assigns itself the
  events and ticks partitions of those numbers (``assign``), from its own group's committed offsets, and
  takes no batch while Faust rebalances or restores the tables (``app.rebalancing``).
- **Revocation.** ``revoke`` waits for the batch in flight to be written, then stops fetching. Records
  fetched before an assignment changed are dropped unprocessed: the next ``assign`` reads them again.
- **Offsets.** Committed after the batch's own commit, to the group ``<app id>-pipeline``, which never has
  members (the feed ``assign``s, never ``subscribe``s). A lost commit only makes records read again, which
  the pipeline skips (``READ_UPTO``, ``streams.worker``).
- **Yielding.** The fetch waits in a thread of its own; batches run on the loop one at a time, so the
  timers and the other agents run between them.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Sequence

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, TopicPartition

from herald.kafka import client_config
from herald.settings import Settings
from herald.topics import pipeline_group

log = logging.getLogger("herald.feed")

WAIT_S = 0.05  # how often a feed without partitions (or with the tables restoring) looks again


class Record:
    """One record read, with the attributes of a Faust message that the pipeline uses (``timestamp`` in
    seconds); ``message`` is the record itself, so it also stands where a Faust event would."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")

    def __init__(self, msg: Any) -> None:
        self.topic = msg.topic()
        self.partition = msg.partition()
        self.offset = msg.offset()
        kind, ms = msg.timestamp()
        self.timestamp = ms / 1000 if kind and ms > 0 else None
        self.key = msg.key()
        self.value = msg.value()
        self.headers = msg.headers()

    @property
    def message(self) -> "Record":
        return self


def held(assigned: Iterable[Any], topic: str) -> set[int]:
    """The partition numbers of ``topic`` among Faust's ``assigned`` topic partitions."""
    return {tp.partition for tp in assigned if tp.topic == topic}


def next_offsets(records: Sequence[Record]) -> list[TopicPartition]:
    """What to commit after ``records``: per topic and partition, the offset after the last one read."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset > last.get(key, -1):
            last[key] = record.offset
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in sorted(last.items())]


class Feed:
    def __init__(self, settings: Settings, topics: Sequence[str], rebalancing: Callable[[], bool]) -> None:
        self.topics = tuple(topics)
        self._rebalancing = rebalancing
        self._take_max = settings.take_max
        self._within_s = settings.take_within_s
        self._config = {**client_config(
            settings, **{"group.id": pipeline_group(settings), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed" if settings.exactly_once else "read_uncommitted",
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms,
                         # with the CRITICAL lane on, the lane answers CRITICAL events at once: the feed can gather
                         "fetch.min.bytes": settings.fetch_min_bytes if settings.critical_express else 1,
                         "queued.max.messages.kbytes": 16 * 1024, "fetch.max.bytes": 16 * 1024 * 1024}),
            "error_cb": lambda err: log.warning("pipeline consumer: %s", err)}
        # made at first use: a worker built and never run (as in tests) must not keep dialling the broker
        self._made: Consumer | None = None
        self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="herald-feed")
        self._held: set[int] | None = None  # partition numbers read; None: between a revocation and an assignment
        self._epoch = 0  # changes with every assignment and revocation
        self._busy = asyncio.Lock()  # held while a batch is processed and committed

    @property
    def _consumer(self) -> Consumer:
        if self._made is None:
            self._made = Consumer(self._config)
        return self._made

    @property
    def partitions(self) -> set[int]:
        return set(self._held or ())

    def assign(self, partitions: Iterable[int]) -> None:
        """Read ``partitions`` of every topic from the group's committed offsets (the earliest without one)."""
        self._held = set(partitions)
        self._epoch += 1
        self._consumer.assign([TopicPartition(t, p, OFFSET_STORED) for t in self.topics for p in sorted(self._held)])
        log.info("reading partitions %s of %s", sorted(self._held), ", ".join(self.topics))

    async def revoke(self) -> None:
        """Stop reading: once the batch in flight is written, nothing more is fetched until ``assign``."""
        self._held = None
        self._epoch += 1
        async with self._busy:
            if self._made is not None:
                self._made.unassign()

    def highwater(self, topic: str, partition: int) -> int | None:
        """The partition's end as the last fetch saw it (None: not known yet)."""
        _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        return high if high >= 0 else None

    def ready(self) -> bool:
        return bool(self._held) and not self._rebalancing()

    def between_batches(self) -> asyncio.Lock:
        """Held while a batch is processed and committed (and by ``revoke``): ``async with`` it to run with no
        batch in flight."""
        return self._busy

    async def run(self, handle: Callable[[list[Record]], Awaitable[None]]) -> None:
        """Hand every batch read to ``handle``, then commit its offsets; until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.ready():
                    await asyncio.sleep(WAIT_S)
                    continue
                epoch = self._epoch
                messages = await loop.run_in_executor(self._fetcher, self._consumer.consume, self._take_max,
                                                      self._within_s)
                async with self._busy:
                    if epoch != self._epoch:
                        continue  # fetched before the assignment changed: read again after ``assign``
                    records = [Record(m) for m in messages if not self._failed(m)]
                    if not records:
                        continue
                    await handle(records)
                    self._consumer.commit(offsets=next_offsets(records), asynchronous=True)
        finally:
            self._fetcher.shutdown(wait=True)
            if self._made is not None:
                self._made.close()

    @staticmethod
    def _failed(msg: Any) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("pipeline consumer: %s", err)
        return True
