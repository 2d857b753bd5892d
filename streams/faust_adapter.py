"""Every private attribute of Faust and aiokafka that the worker relies on, behind one small function each.

Faust's public API does not offer what the worker needs for its batch path: reading and writing one
partition's RocksDB file directly, storing the table's persisted changelog offsets after a bulk write,
setting the fetch wait of the consumer it creates, reporting the last assignment to its sticky assignor,
and reading the tables' restore progress. Each of those touches a private name; they are all here, so an
upgrade that removes one breaks this module's test (``tests/streams/test_faust_adapter.py``) instead of a
worker at run time.

Four corrections of Faust's behaviour are installed explicitly (``streams.app.create_app`` calls them),
each idempotent:

- ``install_fetch_max_wait`` replaces Faust's consumer factory to use ``HERALD_FAUST_FETCH_MAX_WAIT_MS``
  instead of the wait Faust hard-codes: aiokafka keeps one fetch in flight per broker and leaves out of it the
  partitions that still have records buffered, so a fetch that holds only quiet partitions is parked at
  the broker for the whole wait while records pile up elsewhere (the events and ticks are read by the
  feed, ``streams.feed``, not by this consumer). With ``HERALD_EXACTLY_ONCE`` the same consumer reads
  committed records only (Faust does so only under its own transactions, which the worker does not use):
  the states a killed batch's aborted transaction logged are never read back by a table's recovery (nor
  the records it moved by the feed, which reads committed records too).
- ``install_resume_after_suspension`` and ``install_seek_forgetting_read_offsets`` close two ways in which
  Faust lost records at a rebalance with state recovery and then committed past them (issue #12, an event
  that never got a decision); their docstrings say how.
- ``install_exact_gaps`` notes the offsets a fetch skipped (transaction markers) exactly, so the commit
  keeps up on partitions that hold them.
- ``install_shared_rocksdb_memory`` lets a table's options name one block cache and one memtable budget
  for the whole process (``shared_memory``), where Faust gives every partition of every table its own.

Two more are the worker's own (``streams.worker.create_worker`` calls them): ``recover_past_transaction_markers``
lets the tables' recovery end on changelogs written in transactions, and ``guard_table_recovery`` runs the
worker's fencing of the partitions' previous owners before that recovery reads where the changelogs end,
and lets only the recovery of the current assignment resume the worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterator

import faust.stores.rocksdb as rocksdb_store
import orjson
import rocksdict
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode.utils.queues import FlowControlEvent

_PATCHED = "_herald_fetch_wait"
_RESUME_PATCHED = "_herald_resume_after_suspension"
_SEEK_PATCHED = "_herald_seek_forgets_read_offsets"
_GAP_PATCHED = "_herald_exact_gaps"

log = logging.getLogger("herald.faust_adapter")


def install_fetch_max_wait() -> None:
    """Make Faust's aiokafka consumers use ``app.conf.herald.faust_fetch_max_wait_ms`` (idempotent)."""
    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, _PATCHED, False):
        return

    def create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = original(self, transport)
        herald = getattr(self.app.conf, "herald", None)
        if herald is not None:
            consumer._fetch_max_wait_ms = herald.faust_fetch_max_wait_ms  # read when its fetcher starts
            if herald.exactly_once:  # read when its fetcher starts: aborted outputs and changelog stay unseen
                consumer._isolation_level = "read_committed"
        return consumer

    setattr(create_worker_consumer, _PATCHED, True)
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def install_resume_after_suspension() -> None:
    """Resuming Faust's flow control clears its queues only when the flow was suspended (idempotent).

    Faust clears the streams' queues whenever it resumes the flow, to drop what was queued before a
    rebalance. At the end of a recovery it resumes the stream partitions, seeks them to their committed
    offsets (one round trip per partition) and resumes the flow again; but the flow has been on since the
    recovery began, so records fetched during the seek are already queued, and that last resume dropped
    them after the fetch position had passed them: they were not read again, and the commit went past a
    single missing one (Faust accepts a gap of one at the head of the acked offsets). Resuming a flow that
    is on now leaves the queues alone; a record the seek makes the consumer read again is ignored by the
    policy (its offset is not above the user's ``upto``). A flow suspended by a rebalance still has its
    queues cleared when it resumes."""
    original = FlowControlEvent.resume
    if getattr(original, _RESUME_PATCHED, False):
        return

    def resume(self: FlowControlEvent) -> None:
        if self.is_active():
            return
        original(self)

    setattr(resume, _RESUME_PATCHED, True)
    FlowControlEvent.resume = resume  # type: ignore[method-assign]


def install_seek_forgetting_read_offsets() -> None:
    """Faust's seek to the committed offsets, with its read offsets forgotten first (idempotent).

    Faust drops a fetched record whose offset is below the partition's read offset (the last one it handed
    to the streams) as read already. ``perform_seek`` moves aiokafka's fetch positions one partition at a
    time but sets the read offsets to the committed ones only after the last: in between, records fetched
    from a new position were compared with the old read offset, ahead when the worker had fetched records
    that the rebalance then cleared from its queues, and dropped; the jump that followed was noted as a gap,
    which Faust counts as acked, so the commit went past them. Forgetting the read offsets first lets them
    through (a record handed over twice is ignored by the policy)."""
    original = FaustConsumer.perform_seek
    if getattr(original, _SEEK_PATCHED, False):
        return

    async def perform_seek(self: FaustConsumer) -> None:
        for tp in list(self._read_offset):
            self._read_offset[tp] = None
        await original(self)

    setattr(perform_seek, _SEEK_PATCHED, True)
    FaustConsumer.perform_seek = perform_seek  # type: ignore[method-assign]


def install_exact_gaps() -> None:
    """Faust's note of the offsets a fetch skipped, made exact (idempotent).

    Offsets a consumer never receives (transaction markers, records of aborted transactions under
    read-committed, records a compaction removed) lie between two records it does receive; Faust notes them
    as a gap and counts the gap as acked, so that its commit can pass them. Its ``_add_gap(tp, after_last,
    now_read)`` noted one offset too many at each end: the record just read (acked again once processed: a
    duplicate that splits the acked offsets into runs, and each commit takes one run), and next to a commit
    it began one past the committed offset, which is the next offset to read, so that offset was never
    noted. On a partition where every other offset is a transaction marker (each record moved home under
    ``HERALD_EXACTLY_ONCE`` is its own transaction) each commit then advanced a record or two: the committed
    offset fell thousands of records behind within minutes, and a restarted worker read, moved and
    dead-lettered all of those again. This notes exactly ``[max(after_last, committed), now_read)``.

    A gap of more than one offset is logged (partition and range): a lone offset is a transaction's marker,
    several in a row are an aborted transaction, a compaction, or records a fetch skipped, which is a loss
    if they were never handed over; the log line is the evidence to look for when an input goes undecided."""
    original = FaustConsumer._add_gap
    if getattr(original, _GAP_PATCHED, False):
        return

    async def _add_gap(self: FaustConsumer, tp: TP, offset_from: int, offset_to: int) -> None:
        committed = self._committed_offset[tp]
        start = offset_from if committed is None else max(offset_from, committed)
        if start < offset_to:
            if offset_to - start > 1:
                log.info("offsets %d..%d of %s[%d] skipped by the fetch: counted as done", start, offset_to - 1,
                         tp.topic, tp.partition)
            gaps = self._gap[tp]
            gaps.addi(start, offset_to)  # an interval tree's end is exclusive: the record read is not in it
            await asyncio.sleep(0)  # a long gap's bookkeeping lets health checks and heartbeats through
            gaps.merge_overlaps()

    setattr(_add_gap, _GAP_PATCHED, True)
    FaustConsumer._add_gap = _add_gap  # type: ignore[method-assign]


class _SharedMemoryOptions(rocksdb_store.RocksDBOptions):
    """Faust's RocksDB options, but with the extra option ``shared_memory`` (an object with ``cache``, a
    ``rocksdict.Cache``, and ``write_buffers``, a ``rocksdict.WriteBufferManager``) every database opened
    with them charges that one block cache and that one memtable budget."""

    def as_options(self) -> Any:
        options = super().as_options()
        shared = self.extra_options.get("shared_memory")
        if shared is not None and self.use_rocksdict:
            import rocksdict

            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(self.bloom_filter_size, True)
            table.set_block_cache(shared.cache)
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            options.set_block_based_table_factory(table)
            options.set_write_buffer_manager(shared.write_buffers)
        return options


def install_shared_rocksdb_memory() -> None:
    """Faust's RocksDB store builds its options from ``faust.stores.rocksdb.RocksDBOptions`` when a table's
    store is made: that name now makes options that honour ``shared_memory`` (the rest unchanged)."""
    if not issubclass(rocksdb_store.RocksDBOptions, _SharedMemoryOptions):
        rocksdb_store.RocksDBOptions = _SharedMemoryOptions  # type: ignore[misc]


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict database of one partition of ``table``."""
    return table.data._db_for_partition(partition)


def read_raw(table: Any, key_bytes: bytes, partition: int) -> bytes | None:
    """The stored bytes of ``key_bytes`` on ``partition``, without a table read's layers."""
    return partition_db(table, partition).get(key_bytes)


def flush(table: Any, partition: int) -> None:
    """Write ``partition``'s memtables of ``table`` to its files, and wait for it: their memory is freed."""
    partition_db(table, partition).flush(True)


def scan(table: Any, partition: int) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) stored for ``partition``, without Faust's own offset record. The blocks read are
    kept out of the block cache: a scan reads each once, and would push out the ones batches read again."""
    offset_key = table.data.offset_key
    once = rocksdict.ReadOptions()
    once.fill_cache(False)  # type: ignore[call-arg]  # (the stub omits the flag the method takes)
    for key, value in partition_db(table, partition).items(read_opt=once):
        if key != offset_key and value is not None:
            yield key, value


def encode_key(table: Any, key: Any) -> bytes:
    return table.data._encode_key(key)


def json_key(key: str) -> bytes:
    """What ``encode_key`` makes of a ``str`` key for a table with Faust's default (json) key serializer,
    without its layers: Faust's json is orjson's when orjson is installed, as it is with Herald."""
    return orjson.dumps(key)


def encode_value(table: Any, value: Any) -> bytes:
    return table.data._encode_value(value)


def decode_value(table: Any, raw: bytes) -> Any:
    return table.data._decode_value(raw)


def persist_offset(table: Any, partition: int, offset: int) -> None:
    """Record that ``table``'s changelog up to ``offset`` of ``partition`` is applied locally."""
    table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), partition), offset)


def assignor_assignment(app: Any) -> Any:
    """What the sticky assignor reports it holds when the worker joins the group."""
    return app.assignor._assignment


def set_assignor_assignment(app: Any, assignment: Any) -> None:
    app.assignor._assignment = assignment


def table_recovery(app: Any) -> Any | None:
    """The tables' recovery service (``in_recovery``, ``active_remaining_total()``), or None while the
    worker has not made it yet. Faust's public ``app.tables.recovery`` makes one when read, which a metrics
    scrape before the worker starts must not do."""
    return app.tables._recovery


class _ReadsCommitted:
    """The app as the tables' recovery sees it under Herald's exactly-once: ``in_transaction`` is true, so that
    Faust's recovery treats a changelog ending in a transaction marker (which a consumer never receives) as
    read once its position is past it; every other attribute is the app's own, read and set through."""

    in_transaction = True

    def __init__(self, app: Any) -> None:
        object.__setattr__(self, "_app", app)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_app"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_app"), name, value)


# How long the recovery waits for a changelog record before it counts a quiet spell (Faust: 5 s).
RECOVERY_IDLE_S = 1.5


class _QuickIdleQueue:
    """The changelog queue as the tables' recovery sees it: ``get()`` gives up after ``idle_s`` (raising
    ``TimeoutError``, which the recovery counts as a quiet spell), every other attribute is the queue's own.
    Cancelling an ``asyncio.Queue.get`` leaves the item in the queue, as Faust's own 5 s ``wait_for`` relies on.

    While a recovery is on, a quiet spell is only reported once the queue has had no record for two spells
    since that recovery began: Faust counts quiet spells in a loop that outlives each recovery and never
    resets the count when a new one starts, so its "two in a row" guard was already met by the idle time
    before it, and the first spell of a new recovery marked a partition done by its consumer position while
    the records behind that position were still on their way to this queue; those then arrived with
    offsets the recovery had counted as read, and were dropped (the chaos run's stale states, RELIABILITY.md)."""

    def __init__(self, queue: Any, idle_s: float, recovery: Any = None) -> None:
        self._queue = queue
        self._idle_s = idle_s
        self._recovery = recovery
        self._last_record = 0.0  # monotonic time of the last record handed out

    async def get(self) -> Any:
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self._idle_s)
            except asyncio.TimeoutError:
                if not self._quiet_long_enough():
                    continue
                raise
            self._last_record = time.monotonic()
            return item

    def _quiet_long_enough(self) -> bool:
        recovery = self._recovery
        if recovery is None or not recovery.in_recovery:
            return True
        since = max(self._last_record, recovery._recovery_started_at or 0.0)
        return time.monotonic() - since >= 2 * self._idle_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class _QuickIdleTables:
    """The table manager as the tables' recovery sees it: its ``changelog_queue`` is a ``_QuickIdleQueue``."""

    def __init__(self, tables: Any, idle_s: float, recovery: Any = None) -> None:
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "changelog_queue", _QuickIdleQueue(tables.changelog_queue, idle_s, recovery))

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_tables"), name)

    # the manager is a mapping of the tables by name (the recovery asks ``if not self.tables``)
    def __len__(self) -> int:
        return len(object.__getattribute__(self, "_tables"))

    def __iter__(self) -> Iterator[str]:
        return iter(object.__getattribute__(self, "_tables"))

    def __getitem__(self, name: str) -> Any:
        return object.__getattribute__(self, "_tables")[name]

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_tables"), name, value)


def recover_past_transaction_markers(app: Any, idle_s: float = RECOVERY_IDLE_S) -> None:
    """Let the tables' recovery finish on changelogs written in transactions (``HERALD_EXACTLY_ONCE``), soon.

    Faust waits for a changelog partition's last offset to be read; with transactions that offset is a
    commit (or abort) marker, never delivered, so recovery would wait forever. Faust has the fix
    (``detect_aborted_tx``: a partition whose consumer position is past its last offset is done) but runs it
    only for its own transactions; this gives the recovery service a view of the app that says so.

    Faust runs that check after two quiet spells in a row of 5 s each (its guard against a position that ran
    ahead of records not yet queued), so every restart of a worker waited 10 s on a changelog with nothing
    left to read. The recovery's view of the changelog queue makes a quiet spell ``idle_s``: two of them
    (3 s by default) still guard the same race, and the restart is 7 s sooner."""
    recovery = app.tables.recovery  # made here, before the worker starts, as Faust would at its start
    if not isinstance(recovery.app, _ReadsCommitted):
        recovery.app = _ReadsCommitted(app)
    if not isinstance(recovery.tables, _QuickIdleTables):
        recovery.tables = _QuickIdleTables(recovery.tables, idle_s, recovery)


def guard_table_recovery(app: Any, before: Callable[[set], Awaitable[None]]) -> None:
    """At each assignment, await ``before(assigned)`` before the tables open their partitions and their recovery
    starts; and let only the recovery of the latest assignment, with no rebalance begun since, end the restore
    (resume the streams, clear ``app.rebalancing``, log "Worker ready"). Installing it again replaces ``before``.

    - Faust's ``on_partitions_assigned`` signal is sent only after the tables' rebalance has signalled the
      recovery, which then reads the changelogs' end offsets concurrently with the signal's receivers. Under
      exactly-once that end is the last stable offset: a previous owner's transaction still being committed
      (its commit requested, its markers not yet written) lies past it, so the recovery would stop short.
      The worker's ``before`` fences the previous owners (``Outbox.claim``: ``init_transactions`` returns once
      any transaction of that id is completed, markers included, or aborted), so the end read holds it all.
    - Faust does not stop a recovery when a rebalance begins; only the next assignment's does. A recovery that
      ends in between (the chaos run's stopped worker, woken after its partitions moved, finished the
      recovery it had begun before it was stopped, up to the ends it had read then) resumed the streams and
      cleared ``app.rebalancing``, and the next assignment left it clear: the worker decided events on the
      states of before its stop while its new recovery was still reading what its successor had written
      (RELIABILITY.md). Faust's own guard compares generations, but the consumer's is only updated when the
      next assignment arrives. Such an ending is skipped here; the next assignment's recovery ends the restore."""
    tables, recovery = app.tables, app.tables.recovery
    current: dict[str, Any] = getattr(tables.on_rebalance, "_herald_current", {})
    current["before"] = before
    if "generation" in current:
        return  # installed already: only ``before`` changes
    current.update(generation=None, rebalance=None)
    rebalance, complete = tables.on_rebalance, recovery.on_recovery_completed

    async def on_rebalance(assigned: set, revoked: set, newly_assigned: set, generation_id: int = 0) -> None:
        current["generation"], current["rebalance"] = generation_id, app.rebalancing_count
        await current["before"](assigned)
        await rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(generation_id: int = 0) -> None:
        if generation_id != current["generation"] or app.rebalancing_count != current["rebalance"]:
            log.info("the tables' recovery for generation %s ended after a rebalance began; not resuming on it: "
                     "the next assignment's recovery resumes the worker", generation_id)
            return
        await complete(generation_id)

    on_rebalance._herald_current = current  # type: ignore[attr-defined]
    tables.on_rebalance = on_rebalance
    recovery.on_recovery_completed = on_recovery_completed
