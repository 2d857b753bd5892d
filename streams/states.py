"""Users' states: one JSON value per user in the RocksDB table ``states``, on the user's home partition.

The table holds raw bytes (JSON made and read here with orjson): Faust would decode every record it
restores only to write the bytes back. Reads go straight to the partition's RocksDB file, with no cache (a
cache of many large dicts costs the garbage collector more than a RocksDB get). Writes go in bulk, once per
batch of records, through ``TableBatch``: RocksDB and the changelog, flushed with the batch's outputs.

Each batch logs every user it changed, so the changelog rolls segments often: compaction then keeps it
near one record per user, and a new owner's recovery reads that, not one record per event ever seen.

Beside the users, each partition holds one record of its own, ``READ_UPTO`` (a key no user id can be:
validation refuses control characters): the offset of the last events record whose batch was written,
states and outputs alike. It is written with the batch's states, so it is exactly as durable as they are
(in the same transaction with exactly-once), and a record at or below it that is read again after a crash
or a rebalance (its batch written, its offset not yet committed by Faust) was handled already: the
pipeline skips it. A user's own ``upto`` already made such an event change nothing; the mark also keeps a
bad record from being dead-lettered twice and covers users whose state was deleted. Its value is a JSON
object with nothing a state has (``{"read_upto": offset}``), so a worker of a release without the mark,
meeting it in a rolling upgrade, indexes it as an empty state and never reads it as a user's.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import orjson

from herald.settings import Settings
from streams import faust_adapter
from streams.outbox import MAX_RECORD_BYTES, Outbox
from streams.table_batch import TableBatch

STATES_TABLE = "states"
READ_UPTO = "\x00read-upto"  # the partition's own record: the last events offset whose batch was written
_READ_UPTO_KEY = READ_UPTO.encode()
MB = 1024 * 1024
COMPACTED = {"segment.ms": str(10 * 60_000), "segment.bytes": str(64 * 1024 * 1024), "min.cleanable.dirty.ratio": "0.2",
             "max.message.bytes": str(MAX_RECORD_BYTES)}


def changelog_configs(settings: Settings) -> dict[str, str]:
    """What every table's changelog topic is created with besides Faust's own (compaction): the
    ``min.insync.replicas`` of Herald's other topics (``HERALD_TOPIC_MIN_INSYNC_REPLICAS``), so a state write
    is acknowledged by as many replicas as an event's."""
    return {"min.insync.replicas": str(settings.topic_min_insync_replicas)}


class SharedMemory:
    """The block cache and the memtable budget every table partition of this process shares."""

    def __init__(self, cache_mb: int, memtables_mb: int) -> None:
        import rocksdict

        self.cache = rocksdict.Cache(cache_mb * MB)
        self.write_buffers = rocksdict.WriteBufferManager(memtables_mb * MB, False)  # flush early, never stall


_shared: dict[tuple[int, int], SharedMemory] = {}


def shared_memory(settings: Settings) -> SharedMemory:
    """The process's ``SharedMemory`` for these settings' sizes (one per distinct sizes, made on first use)."""
    sizes = (settings.rocksdb_block_cache_mb, settings.rocksdb_memtables_mb)
    if sizes not in _shared:
        _shared[sizes] = SharedMemory(*sizes)
    return _shared[sizes]


def store_options(settings: Settings) -> dict[str, Any]:
    """Each table partition's RocksDB options (Faust's ``RocksDBOptions``): memtables of
    ``HERALD_ROCKSDB_WRITE_BUFFER_MB`` (two at most), all of them within ``HERALD_ROCKSDB_MEMTABLES_MB``, and
    one block cache of ``HERALD_ROCKSDB_BLOCK_CACHE_MB`` for the process (``faust_adapter``'s
    ``shared_memory``), instead of Faust's 64 MB x 3 memtables and 2 GB cache for every partition of every
    table. A new dict each call: Faust's store takes keys out of the one it is given."""
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * MB, "max_write_buffer_number": 2,
            "target_file_size_base": max(settings.rocksdb_write_buffer_mb, 8) * MB,
            "block_cache_size": settings.rocksdb_block_cache_mb * MB, "shared_memory": shared_memory(settings)}


class UserStates:
    def __init__(self, app: Any, settings: Settings, outbox: Outbox) -> None:
        self.table = app.Table(STATES_TABLE, default=None, partitions=settings.partitions,
                               extra_topic_configs={**COMPACTED, **changelog_configs(settings)},
                               key_type=bytes, value_type=bytes, recovery_buffer_size=10_000,
                               options=store_options(settings))
        # the keys are a user id's UTF-8 bytes, made without Faust's key layers (what its raw serializer makes)
        self._batch = TableBatch(self.table, outbox, encode=orjson.dumps, encode_key=str.encode)

    def get(self, user_id: str, partition: int) -> dict | None:
        """The user's state as stored on ``partition`` (None: none)."""
        raw = faust_adapter.read_raw(self.table, user_id.encode(), partition)
        return None if raw is None else orjson.loads(raw)

    def read_upto(self, partition: int) -> int | None:
        """The last events offset of ``partition`` whose batch was written (None: none yet)."""
        raw = faust_adapter.read_raw(self.table, _READ_UPTO_KEY, partition)
        return None if raw is None else int(orjson.loads(raw)["read_upto"])

    def write(self, changes: Iterable[tuple[str, Any, int]]) -> int:
        """Queue ``(user_id, state or None to delete, partition)`` (or ``(READ_UPTO, mark, partition)``)
        to the changelog and write RocksDB. Raises
        when a change cannot be queued: the caller must then not let the batch's records be committed."""
        return self._batch.write(changes)

    def apply(self) -> None:
        """After the outbox committed the batch: its changes to RocksDB."""
        self._batch.apply()

    def persist_offsets(self) -> None:
        """After the outbox is flushed: the changelog offsets written are applied locally."""
        self._batch.persist_offsets()

    def scan(self, partition: int) -> Iterator[tuple[str, dict]]:
        """Every user's state stored on ``partition``."""
        for key, value in faust_adapter.scan(self.table, partition):
            if key != _READ_UPTO_KEY:  # the partition's own record, not a user's
                yield key.decode(), orjson.loads(value)

    def flush(self, partitions: Iterable[int]) -> None:
        """The memtables of ``partitions`` written to their files, freeing their memory (after a restore)."""
        for partition in partitions:
            faust_adapter.flush(self.table, partition)

    def forget(self) -> None:
        """At a rebalance: changelog offsets acknowledged for partitions that may have moved are not ours."""
        self._batch.forget()
