"""``herald rebuild inbox``: the in-app tables and the unread and unseen counts, rebuilt from Kafka after a
database loss.

The rules:
- The database gets the migrations it lacks first (``infra.postgres.migrate_async``), so an empty or new
  database works.
- It refuses to run over an inbox that holds notifications (``RebuildError``); ``force`` empties the
  ``notifications`` table first (its trigger empties ``unread_counts``). Rebuilding over rows would be
  wrong: a READ_ALL applied again would mark notifications that came after it.
- ``herald.delivery.inapp`` and ``herald.reads`` are read from their oldest record to their end when the
  rebuild starts, merged in timestamp order (a delivery before a read of the same millisecond), and each
  record is applied with the code that applied it the first time: the in-app sink's insert
  (``sinks.inapp.InAppDeliverer``, which skips a ``delivery_id`` already there) for a delivery request,
  the API's store functions (``api.store.mark_read`` / ``mark_seen`` / ``archive`` / ``mark_all_read``) for
  a read. The counts follow from the tables' triggers (migration 002), as they always do.
- Deliveries are inserted in batches, and the batch is written before any read is applied, so a
  READ_ALL marks exactly the notifications delivered before it. A batch the database refuses (a value it
  cannot store) is inserted one request at a time; the one still refused is counted, as the sink counts
  it DEAD.
- ``read_at``, ``seen_at`` and ``archived_at`` are the times of the original actions (each read record's
  ``at``, which the API stamps a moment after writing the database).
- What is not the same as before the loss: records the topics no longer hold (retention) are not rebuilt,
  and a read of a notification whose delivery is gone is counted as "not found"; a READ_ALL made between
  the worker writing a request and the sink inserting it marks that notification too.
- A record that does not decode is skipped and counted.
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from herald.settings import Settings


class RebuildError(Exception):
    """Something the user can fix (a non-empty inbox, an unreachable database); one line for the user."""


@dataclass
class Counts:
    notifications: int = 0                               # rows inserted
    duplicates: int = 0                                  # requests for a delivery_id already inserted
    refused: int = 0                                     # requests the database cannot store
    reads: Counter = field(default_factory=Counter)      # action -> applied
    not_found: int = 0                                   # reads of a notification that is not there
    undecodable: int = 0
    emptied: int = 0                                     # rows the --force emptied


DELIVERY, READ = 0, 1  # the merge's order for records of the same millisecond


def _partition(settings: Settings, topic: str, partition: int, kind: int) -> Iterator[tuple[int, int, int, Any]]:
    """(timestamp, kind, offset, message) of one partition from its oldest record to its end now."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from herald.kafka import client_config

    consumer = Consumer({**client_config(settings), "group.id": f"herald-rebuild-{topic}-{partition}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high <= low:
            return
        consumer.assign([TopicPartition(topic, partition, low)])
        while True:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return
                raise RebuildError(f"{topic}: {msg.error()}")
            if msg.offset() >= high:
                return
            yield msg.timestamp()[1], kind, msg.offset(), msg
            if msg.offset() + 1 >= high:
                return
    finally:
        consumer.close()


def planned(settings: Settings) -> int:
    """The records to read: those of both topics now (transaction markers included, so an upper bound)."""
    from confluent_kafka import Consumer, TopicPartition

    from herald.kafka import client_config

    consumer = Consumer({**client_config(settings), "group.id": "herald-rebuild-plan"})
    try:
        total = 0
        for name in ("delivery.inapp", "reads"):
            topic = settings.topic(name)
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise RebuildError(f"no topic {topic}: nothing to rebuild from")
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += high - low
        return total
    finally:
        consumer.close()


def merged(settings: Settings) -> Iterator[tuple[int, int, int, Any]]:
    """Every record of both topics, in timestamp order (deliveries first within a millisecond)."""
    streams = [_partition(settings, settings.topic(name), p, kind)
               for name, kind in (("delivery.inapp", DELIVERY), ("reads", READ)) for p in range(settings.partitions)]
    return heapq.merge(*streams, key=lambda item: (item[0], item[1]))


async def rebuild_inbox(settings: Settings, force: bool = False, batch: int = 500,
                        tick: Callable[[int], None] = lambda n: None,
                        on_plan: Callable[[int], None] = lambda total: None) -> Counts:
    """Rebuild the in-app tables from the topics (see the module's rules)."""
    import asyncpg

    from api import store
    from infra import postgres
    from schemas.codec import Codec, DecodeError
    from schemas.registry import Registry
    from sinks.inapp import InAppDeliverer

    counts = Counts()
    try:
        await postgres.migrate_async(settings.database_url)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RebuildError(f"PostgreSQL at {settings.database_host_port[0]}:{settings.database_host_port[1]} "
                           f"did not answer ({type(exc).__name__}); is it up?") from None
    try:
        held = await pool.fetchval("SELECT count(*) FROM notifications")
        if held and not force:
            raise RebuildError(f"the inbox already holds {held} notifications; --force empties it first "
                               "(every row, read or not) and rebuilds it from the topics")
        if held:
            await pool.execute("TRUNCATE notifications")
            counts.emptied = held
        on_plan(planned(settings))
        codec = Codec(Registry.from_settings(settings))
        insert = InAppDeliverer(pool)
        waiting: list[dict] = []

        async def flush() -> None:
            if not waiting:
                return
            try:
                outcomes = await insert(waiting)
            except asyncpg.PostgresError:
                outcomes = []
                for r in waiting:  # one at a time: only the one the database refuses is lost
                    try:
                        outcomes += await insert([r])
                    except asyncpg.PostgresError:
                        counts.refused += 1
            for o in outcomes:
                if o.status == "SENT":
                    counts.notifications += 1
                else:
                    counts.duplicates += 1
            waiting.clear()

        actions = {"READ": store.mark_read, "SEEN": store.mark_seen, "ARCHIVED": store.archive}
        for n, (_, kind, _, msg) in enumerate(merged(settings), 1):
            tick(n)
            try:
                record = codec.decode(msg.value(), "DeliveryRequest" if kind == DELIVERY else "ReadEvent")
            except DecodeError:
                counts.undecodable += 1
                continue
            if kind == DELIVERY:
                waiting.append(record)
                if len(waiting) >= batch:
                    await flush()
                continue
            await flush()
            action = record["action"]
            at = record["at"]  # when the user acted, not now
            if action == "READ_ALL":
                await store.mark_all_read(pool, record["user_id"], at=at)
                counts.reads[action] += 1
            elif record.get("notification_id") and action in actions:
                if await actions[action](pool, record["user_id"], record["notification_id"], at=at):
                    counts.reads[action] += 1
                else:
                    counts.not_found += 1
        await flush()
    finally:
        await pool.close()
    return counts


def summary(counts: Counts) -> str:
    reads = ", ".join(f"{n} {a}" for a, n in sorted(counts.reads.items())) or "none"
    extra = [f"{what} {n}" for what, n in (("duplicate requests", counts.duplicates),
                                           ("refused by the database", counts.refused),
                                           ("reads of a notification not found", counts.not_found),
                                           ("records not decoded", counts.undecodable)) if n]
    return (("emptied " + str(counts.emptied) + " notifications; " if counts.emptied else "")
            + f"rebuilt {counts.notifications} notifications; applied reads: {reads}"
            + ("; " + "; ".join(extra) if extra else ""))
