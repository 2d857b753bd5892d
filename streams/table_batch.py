"""One batch's writes to a Faust RocksDB table, in bulk: the same bytes Faust would write, fewer steps.

Faust writes a table key by key: each set sends one changelog record through its own (aiokafka)
producer and puts one key into RocksDB, ~40 µs of Python a key. The pipeline changes about one user
state per event, so it writes them here instead, once per batch:

- each value is encoded with the table's own serializers, so RocksDB and the changelog hold exactly
  what ``table[key] = value`` would have put there, and recovery, standbys and a worker of an older
  version read them as usual;
- the changelog records go through the ``Outbox`` (librdkafka) with the key's partition given, and
  the caller flushes it before the batch's records are acked: a state is durable before the offset of
  the record that made it can be committed;
- RocksDB gets one ``WriteBatch`` per partition, written (``apply``) only once the changelog records are
  committed: a state RocksDB holds is always one the changelog holds too (with exactly-once, a killed
  batch's aborted changelog records never reach RocksDB). Then the offsets the changelog reached are
  stored as Faust's persisted offsets, so a restart replays only what came after them.

``None`` deletes the key (a tombstone in the changelog). The caller must own the keys' partitions, and read
them by partition (``faust_adapter.read_raw``): Faust's key-to-partition index, which only spares its own
key lookups a search of every partition, is not kept up to date here.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

from rocksdict import WriteBatch

from streams import faust_adapter
from streams.outbox import Outbox


class TableBatch:
    def __init__(self, table: Any, outbox: Outbox, encode: Callable[[Any], bytes] | None = None,
                 encode_key: Callable[[Any], bytes] | None = None) -> None:
        self.table = table
        self.outbox = outbox
        self.encode = encode  # values to bytes before the table's serializer, for a raw-bytes table
        self.encode_key = encode_key  # the table's key serializer's result, without its layers (raw keys)
        self._reached: dict[int, int] = {}  # changelog partition -> highest offset acknowledged
        self._local: list[tuple[int, WriteBatch]] = []  # RocksDB writes waiting for the changelog

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def write(self, changes: Iterable[tuple[Any, Any, int]]) -> int:
        """Queue ``(key, value or None, partition)`` to the changelog and write them to RocksDB; the count."""
        table, topic = self.table, self.changelog
        batches: dict[int, WriteBatch] = defaultdict(lambda: WriteBatch(raw_mode=True))
        changes = list(changes)
        # In a transaction a failed record fails the commit, and a partition's records are acknowledged in
        # order: its last one alone tells how far the changelog reached. Otherwise each one reports.
        last = {partition: i for i, (_, _, partition) in enumerate(changes)} if self.outbox.exactly_once else None
        count = 0
        for i, (key, value, partition) in enumerate(changes):
            key_bytes = self.encode_key(key) if self.encode_key else faust_adapter.encode_key(table, key)
            if value is not None and self.encode is not None:
                value = self.encode(value)
            value_bytes = None if value is None else faust_adapter.encode_value(table, value)
            report = self._delivered if last is None or last[partition] == i else None
            self.outbox.send(topic, key_bytes, value_bytes, partition, on_delivery=report, source=partition)
            if value_bytes is None:
                batches[partition].delete(key_bytes)
            else:
                batches[partition].put(key_bytes, value_bytes)
            count += 1
        for partition, batch in batches.items():  # applied locally once the changelog has them (``apply``)
            self._local.append((partition, batch))
        return count

    def apply(self) -> None:
        """After the outbox committed: write the batch's changes to RocksDB."""
        local, self._local = self._local, []
        for partition, batch in local:
            faust_adapter.partition_db(self.table, partition).write(batch)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            partition, offset = msg.partition(), msg.offset()
            if offset > self._reached.get(partition, -1):
                self._reached[partition] = offset
        else:
            self.outbox.failed(f"{msg.topic()}: {err}")

    def persist_offsets(self) -> None:
        """After a flush: remember in RocksDB how far the changelog is known to be applied locally."""
        for partition, offset in self._reached.items():
            faust_adapter.persist_offset(self.table, partition, offset)
        self._reached.clear()

    def forget(self) -> None:
        """At a rebalance: offsets acknowledged for partitions that may have moved are not ours to store."""
        self._reached.clear()  # (the RocksDB writes waiting for a commit still go: what the changelog holds)
