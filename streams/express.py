"""The CRITICAL lane's reader: every events record as it arrives, ahead of the pipeline's batches.

The pipeline decides a batch at a time, so an event arriving while one is being decided waits for it,
for the batches and digests the clock releases with it, and for its commit. This reader (a second
confluent-kafka consumer, in a thread of its own, on the partitions the feed holds, from their end at each
assignment) reads each record's user and priority and queues them in ``inbox`` with the record itself,
decoded only when it is CRITICAL (or, on the loop, when it must go ahead with its user's CRITICAL event).
The pipeline takes them in between the records it decides (``agents.lane`` says which CRITICAL events may
go ahead, and which of their users' records with them) and sends those events' delivery requests at once
(``Outbox.express``), while their decisions and states are committed with the batch in flight.

It never commits offsets (its group ``<app id>-express`` has no members and no offsets) and never
dead-letters: a record it cannot read only holds back the CRITICAL events behind it on its partition,
until the pipeline reads it the usual way.

Delivery: a request sent at once is sent again, the same bytes, when its batch fails and is decided again,
or when a stopped worker wakes up and decides a CRITICAL event its partition's new owner decides too; the
sinks' ledger sends each ``delivery_id`` once. ``HERALD_CRITICAL_EXPRESS=false`` turns the lane off.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, NamedTuple

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from herald.kafka import client_config
from herald.settings import Settings
from schemas.codec import Codec
from schemas.registry import RegistryUnavailable
from streams.feed import Record

log = logging.getLogger("herald.express")

WAIT_S = 0.1  # the longest a fetch waits in the reader's thread (it stops within that)
REGISTRY_PAUSE_S = 5.0  # how long the reader stops asking the registry after it could not answer
INBOX_MAX = 100_000  # records read and not yet taken in on the loop (which takes them in between records, and
# not at all while the tables restore): past this they are dropped, and their partitions start over in the lane
KEEP_MAX = 20_000  # past this many in the inbox, records that are not CRITICAL are queued without their bytes (they
# then hold back their users' later CRITICAL events until the pipeline decides them): what the inbox may hold stays small


class Candidate(NamedTuple):
    """A record the reader read of a known user: the record, the event for a CRITICAL one (None for others,
    decoded only if they must go ahead with their user's CRITICAL event), and when the reader read it
    (monotonic seconds)."""

    record: Record
    event: dict | None
    read_at: float


class Watcher:
    def __init__(self, settings: Settings, topic: str, codec: Codec) -> None:
        self.topic = topic
        self._codec = codec
        self._config = {**client_config(
            settings, **{"group.id": f"{settings.app_id}-express", "enable.auto.commit": False,
                         "auto.offset.reset": "latest",
                         "isolation.level": "read_committed" if settings.exactly_once else "read_uncommitted",
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms, "queued.max.messages.kbytes": 4 * 1024,
                         "fetch.max.bytes": 4 * 1024 * 1024}),
            "error_cb": lambda err: log.warning("express consumer: %s", err)}
        self._wanted: list[int] = []  # the partitions to read, as the last ``assign`` or ``revoke`` said
        # (epoch, partition, offset, user or None, a ``Candidate`` for a record of a known user or None, whether
        # records of the partition were dropped just before): appended by the reader's thread, taken on the loop;
        # entries of an earlier epoch (assignment) are stale
        self.inbox: deque = deque()
        # called from the reader's thread after it queues a CRITICAL event (``Pipeline.lane_when_idle`` sets it)
        self.on_critical: Callable[[], object] | None = None
        self.epoch = 0
        self._registry_down_until = 0.0  # monotonic time: until then, no schema is asked of the registry
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="herald-express", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)

    def assign(self, partitions: Iterable[int]) -> None:
        """Read ``partitions`` from their end on (from the reader's thread, at its next fetch)."""
        self._wanted = sorted(partitions)
        self.epoch += 1
        self.inbox.clear()

    def revoke(self) -> None:
        self._wanted = []
        self.epoch += 1
        self.inbox.clear()

    def _run(self) -> None:
        # The consumer is used from this thread only: librdkafka's unassign waits for a fetch in flight
        # in another thread, which a loop of fetches would keep it waiting for.
        consumer = Consumer(self._config)
        applied = 0
        dropped: set[int] = set()  # partitions whose records were dropped since their last entry
        try:
            while not self._stopping.is_set():
                epoch = self.epoch
                if epoch != applied:
                    consumer.assign(self._from_end(consumer, self._wanted))
                    applied = epoch
                    dropped.clear()
                if not self._wanted:
                    self._stopping.wait(WAIT_S)
                    continue
                # a batch fetch would wait its whole timeout for the batch to fill: wait for one record only,
                # then take what else is there without waiting
                first = consumer.poll(WAIT_S)
                if first is None:
                    continue
                read_at = time.monotonic()
                for msg in [first, *consumer.consume(500, 0)]:
                    if msg.error() is not None:
                        continue
                    partition = msg.partition()
                    if len(self.inbox) >= INBOX_MAX:
                        dropped.add(partition)
                        continue
                    keep = len(self.inbox) < KEEP_MAX
                    entry = (applied, partition, msg.offset(), *self.peek(msg, read_at, keep), partition in dropped)
                    self.inbox.append(entry)
                    dropped.discard(partition)
                    if entry[4] is not None and entry[4].event is not None and self.on_critical is not None:
                        self.on_critical()
        except Exception:  # noqa: BLE001 - a broken reader leaves the lane idle; the pipeline goes on without it
            log.exception("the express reader stopped")
        finally:
            consumer.close()

    def _from_end(self, consumer: Consumer, partitions: list[int]) -> list[TopicPartition]:
        """The partitions at their end now, as offsets (logged: a lane started this late covers the records from
        there on). A partition whose end cannot be asked starts at the end its first fetch finds."""
        starts = []
        for partition in partitions:
            try:
                end = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)[1]
            except Exception as exc:  # noqa: BLE001 - librdkafka's own end-of-partition lookup does the same later
                log.warning("the CRITICAL lane could not ask where partition %d ends (%s)", partition, exc)
                end = OFFSET_END
            starts.append(TopicPartition(self.topic, partition, end))
        if partitions:
            log.info("the CRITICAL lane reads partitions %s of %s from offsets %s", partitions, self.topic,
                     [tp.offset for tp in starts])
        return starts

    def peek(self, msg: Any, read_at: float = 0.0, keep: bool = True) -> tuple[str | None, Candidate | None]:
        """The record's user (None: it cannot be read here), and with it a ``Candidate`` (read at ``read_at``),
        with the event decoded for a CRITICAL one; for another record, only if ``keep``.
        A writer schema not cached yet is asked of the registry here, in this thread (``Codec.head``); while
        the registry cannot answer, records of such a schema are unreadable here for ``REGISTRY_PAUSE_S``.
        A record is decoded whole only when it is CRITICAL."""
        value = msg.value()
        fetch = time.monotonic() >= self._registry_down_until
        try:
            head = self._codec.head(value, fetch=fetch)
        except RegistryUnavailable as exc:
            log.warning("the CRITICAL lane cannot read a schema for %.0f s: %s", REGISTRY_PAUSE_S, exc)
            self._registry_down_until = time.monotonic() + REGISTRY_PAUSE_S
            head = None
        if head is None:
            return None, None
        user_id, priority = head
        if priority != "CRITICAL":
            return user_id, Candidate(Record(msg), None, read_at) if keep else None
        try:
            event = self._codec.decode(value, "NotificationEvent")
        except Exception:  # noqa: BLE001 - not for this reader to judge: the pipeline dead-letters it
            return user_id, None
        if event.get("user_id") != user_id:
            return None, None
        return user_id, Candidate(Record(msg), event, read_at)
