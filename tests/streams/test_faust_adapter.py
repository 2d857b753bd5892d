"""Every private Faust/aiokafka name the worker relies on still exists: an upgrade that removes one fails
here, not in a running worker."""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from faust.stores.rocksdb import Store
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from herald.settings import Settings
from streams import faust_adapter
from streams.app import create_app


@pytest.mark.parametrize("name", ["_db_for_partition", "_encode_key", "_encode_value", "_decode_value",
                                  "offset_key", "set_persisted_offset"])
def test_the_rocksdb_store_still_has(name):
    assert hasattr(Store, name)


def test_the_private_names_of_the_consumer_the_assignor_and_streams_still_exist():
    from faust.transport.consumer import Consumer as FaustConsumer
    from mode.utils.queues import FlowControlEvent

    assert hasattr(AIOKafkaConsumerThread, "_create_worker_consumer")
    assert hasattr(FlowControlEvent, "resume") and hasattr(FlowControlEvent, "is_active")
    assert hasattr(FaustConsumer, "perform_seek") and "_read_offset" in inspect.getsource(FaustConsumer.__init__)
    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._isolation_level = isolation_level" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)

    async def assignor_has_assignment(tmp: str) -> bool:
        app = create_app(Settings(app_id="test-adapter", data_dir=tmp))
        return hasattr(app.assignor, "_assignment")

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        assert asyncio.run(assignor_has_assignment(tmp))


def test_reads_and_writes_through_the_adapter_reach_the_partition_s_rocksdb_file(tmp_path):
    async def roundtrip() -> tuple:
        app = create_app(Settings(app_id="test-adapter-rw", data_dir=str(tmp_path), partitions=2))
        table = app.Table("t", default=None, partitions=2, key_type=bytes, value_type=bytes)
        faust_adapter.partition_db(table, 1).put(b"k", b"v")
        found = faust_adapter.read_raw(table, b"k", 1), faust_adapter.read_raw(table, b"k", 0)
        listed = list(faust_adapter.scan(table, 1))
        faust_adapter.persist_offset(table, 1, 41)
        persisted = table.data.persisted_offset(faust_adapter.TP(table.changelog_topic.get_topic_name(), 1))
        return found, listed, persisted

    found, listed, persisted = asyncio.run(roundtrip())
    assert found == (b"v", None)
    assert listed == [(b"k", b"v")]
    assert persisted == 41


def test_installing_the_fetch_wait_twice_wraps_faust_s_factory_once():
    faust_adapter.install_fetch_max_wait()
    first = AIOKafkaConsumerThread._create_worker_consumer
    faust_adapter.install_fetch_max_wait()
    assert AIOKafkaConsumerThread._create_worker_consumer is first


def test_resuming_a_flow_that_is_on_keeps_what_is_queued_and_a_suspended_one_still_clears():
    """Issue #12: the last resume of a recovery dropped the records fetched during the seek."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    faust_adapter.install_resume_after_suspension()
    faust_adapter.install_resume_after_suspension()  # idempotent

    async def scenario() -> None:
        flow = FlowControlEvent(initially_suspended=False)
        queue: FlowControlQueue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        queue.put_nowait("fetched during the seek")
        flow.resume()  # Faust's last resume of a recovery, the flow being on: nothing may be dropped
        assert queue.qsize() == 1
        flow.suspend()  # a rebalance: what was queued before it is dropped when the flow resumes
        flow.resume()
        assert queue.qsize() == 0 and flow.is_active()

    asyncio.run(scenario())


def test_the_seek_to_committed_offsets_starts_with_the_read_offsets_forgotten(tmp_path):
    """Issue #12: records fetched during the seek were compared with stale read offsets and dropped."""
    faust_adapter.install_seek_forgetting_read_offsets()

    async def seen_during_the_seek() -> dict:
        app = create_app(Settings(app_id="test-adapter-seek", data_dir=str(tmp_path)))
        consumer = app.consumer
        consumer._read_offset[faust_adapter.TP("t", 0)] = 7258  # ahead: fetched, then cleared by a rebalance
        seen: dict = {}

        async def seek_to_committed() -> dict:
            seen.update(consumer._read_offset)
            return {faust_adapter.TP("t", 0): 6080}

        consumer.seek_to_committed = seek_to_committed
        await consumer.perform_seek()
        return {"during": seen, "after": dict(consumer._read_offset)}

    result = asyncio.run(seen_during_the_seek())
    assert result["during"] == {faust_adapter.TP("t", 0): None}
    assert result["after"][faust_adapter.TP("t", 0)] == 6080


def test_a_partition_where_every_other_offset_is_a_transaction_marker_commits_as_it_goes(tmp_path):
    """Records at odd offsets, transaction markers (never received) at even ones, as on an events partition
    that records are moved home to under exactly-once. Faust's gap note, one offset too long at both ends,
    let each commit pass one record or two; with the exact note each commit passes everything acked."""
    import inspect

    from faust.transport import consumer as consumer_module

    assert "await self._add_gap(tp, r_offset + 1, offset)" in inspect.getsource(consumer_module)
    faust_adapter.install_exact_gaps()
    faust_adapter.install_exact_gaps()  # idempotent

    async def commits() -> list:
        app = create_app(Settings(app_id="test-adapter-gaps", data_dir=str(tmp_path)))
        consumer = app.consumer
        tp = faust_adapter.TP("events", 0)
        consumer._committed_offset[tp] = 482  # the next offset to read: a marker (the last record was 481)
        last_read = 482  # what the seek leaves as the read offset: the committed one
        made = []
        for first in (483, 493, 503):  # three commit intervals, five records each
            for offset in range(first, first + 10, 2):
                if offset - last_read > 1:  # what Faust's fetch loop does for a jump
                    await consumer._add_gap(tp, last_read + 1, offset)
                last_read = offset
                consumer._acked_index[tp].add(offset)  # what Faust's ack does once the record is processed
                consumer._acked[tp].append(offset)
            new = consumer._new_offset(tp)
            if new is not None:
                consumer._committed_offset[tp] = new
            made.append(new)
        return made

    assert asyncio.run(commits()) == [492, 502, 512]  # each past its last record (and the marker after it)


def test_a_gap_of_several_offsets_is_logged_with_its_partition_and_range(tmp_path, caplog):
    import logging

    faust_adapter.install_exact_gaps()

    async def gaps() -> list:
        app = create_app(Settings(app_id="test-adapter-gap-log", data_dir=str(tmp_path)))
        tp = faust_adapter.TP("events", 3)
        app.consumer._committed_offset[tp] = 100
        await app.consumer._add_gap(tp, 101, 102)  # one marker: not worth a line
        await app.consumer._add_gap(tp, 103, 110)  # seven offsets skipped
        return sorted((i.begin, i.end) for i in app.consumer._gap[tp])

    with caplog.at_level(logging.INFO, logger="herald.faust_adapter"):
        assert asyncio.run(gaps()) == [(101, 102), (103, 110)]
    assert [r.getMessage() for r in caplog.records] == [
        "offsets 103..109 of events[3] skipped by the fetch: counted as done"]


def test_the_tables_recovery_is_read_without_making_one(tmp_path):
    """``table_recovery`` is None until Faust makes its recovery service, then that same service, whose
    ``in_recovery`` and ``active_remaining_total()`` the worker's restore metrics read."""

    async def seen() -> tuple:
        app = create_app(Settings(app_id="test-adapter-recovery", data_dir=str(tmp_path)))
        before = faust_adapter.table_recovery(app)
        made = app.tables.recovery
        return before, made, faust_adapter.table_recovery(app)

    before, made, after = asyncio.run(seen())
    assert before is None and after is made
    assert made.in_recovery is False and made.active_remaining_total() == 0


def test_the_worker_s_metrics_report_the_tables_restore_progress(tmp_path):
    """``herald_worker_restoring`` and ``herald_worker_restore_remaining`` follow the worker's own tables."""
    from streams.worker import create_worker

    def samples(app: Any) -> dict[str, float]:
        return {s.name: s.value for family in app.herald_pipeline.metrics.registry.collect() for s in family.samples
                if s.name.startswith("herald_worker_restor")}

    async def scraped() -> tuple:
        # the worker makes the recovery service when it is created (``guard_table_recovery``), as Faust would
        # at its start; a bare app has none until then (``test_the_tables_recovery_is_read_without_making_one``)
        app = create_worker(Settings.from_env(app_id="test-adapter-restore", data_dir=str(tmp_path), exactly_once=False),
                            register=False)
        before = samples(app)  # not restoring: zeros
        assert faust_adapter.table_recovery(app) is app.tables.recovery
        app.tables.recovery.in_recovery = True
        return before, samples(app)

    before, during = asyncio.run(scraped())
    assert before == {"herald_worker_restoring": 0.0, "herald_worker_restore_remaining": 0.0}
    assert during["herald_worker_restoring"] == 1.0


def test_the_recovery_finishes_past_transaction_markers_only_through_its_own_view_of_the_app(tmp_path):
    """Exactly-once: Faust's recovery skips a changelog's trailing transaction marker only when the app says it
    is in a transaction; the worker's recovery gets a view that says so, the app itself does not change."""
    import inspect

    from faust.tables import recovery as recovery_module

    source = inspect.getsource(recovery_module)
    assert "self.app.in_transaction and timeout_count > 1" in source and "detect_aborted_tx" in source

    async def scenario() -> None:
        app = create_app(Settings(app_id="test-markers", data_dir=str(tmp_path)))
        faust_adapter.recover_past_transaction_markers(app)
        faust_adapter.recover_past_transaction_markers(app)  # idempotent
        recovery = app.tables.recovery
        assert recovery.app.in_transaction is True and app.in_transaction is False
        assert recovery.app.conf is app.conf
        recovery.app.in_recovery = True  # what the recovery sets reaches the app
        assert app.in_recovery is True

    asyncio.run(scenario())


def test_the_recovery_counts_a_quiet_changelog_after_a_short_wait_and_loses_no_record(tmp_path):
    """Exactly-once: Faust checks for trailing markers after two quiet 5 s spells; the recovery's view of the
    changelog queue makes a spell ``idle_s``, hands over every record put meanwhile, and changes nothing else."""
    import inspect
    import time

    from faust.tables import recovery as recovery_module

    source = inspect.getsource(recovery_module)
    assert "changelog_queue = self.tables.changelog_queue" in source
    assert "changelog_queue.get(), timeout=5.0" in source and "except asyncio.TimeoutError:" in source
    assert "if not self.tables" in source

    async def scenario() -> None:
        app = create_app(Settings(app_id="test-quiet", data_dir=str(tmp_path)))
        app.GlobalTable("quiet-t", partitions=1)
        faust_adapter.recover_past_transaction_markers(app, idle_s=0.2)
        faust_adapter.recover_past_transaction_markers(app, idle_s=0.2)  # idempotent
        recovery = app.tables.recovery
        queue = recovery.tables.changelog_queue
        assert len(recovery.tables) == len(app.tables) == 1 and list(recovery.tables) == ["quiet-t"]
        assert recovery.tables["quiet-t"] is app.tables["quiet-t"]
        started = time.monotonic()
        try:
            await asyncio.wait_for(queue.get(), timeout=5.0)  # as Faust's loop waits
        except asyncio.TimeoutError:
            waited = time.monotonic() - started
        assert 0.15 < waited < 2.0
        app.tables.changelog_queue.put_nowait("record")  # the conductor puts into the real queue
        assert await asyncio.wait_for(queue.get(), timeout=5.0) == "record"
        assert app.tables.changelog_queue.qsize() == 0 and queue.qsize() == 0

    asyncio.run(scenario())


def test_every_table_partition_opened_through_faust_charges_the_one_shared_cache(tmp_path):
    """Faust's store makes its options from the module's ``RocksDBOptions`` name, which the adapter replaces:
    two tables' partitions, written and read, all fill the process's one block cache and memtable budget."""
    from streams.states import SharedMemory

    shared = SharedMemory(cache_mb=8, memtables_mb=16)

    async def fill() -> tuple[Any, int, int]:
        app = create_app(Settings(app_id="test-adapter-shared", data_dir=str(tmp_path), partitions=2))
        tables = [app.Table(name, default=None, partitions=2, key_type=bytes, value_type=bytes,
                            options={"shared_memory": shared}) for name in ("a", "b")]
        memtables = 0
        for table in tables:
            for partition in (0, 1):
                db = faust_adapter.partition_db(table, partition)
                for i in range(2_000):
                    db.put(f"k{i}".encode(), b"x" * 500)
                memtables = shared.write_buffers.get_usage()
                db.flush()
                assert all(db.get(f"k{i}".encode()) == b"x" * 500 for i in range(0, 2_000, 7))
        return type(tables[0].data.rocksdb_options), memtables, shared.cache.get_usage()

    options_type, memtables, cached = asyncio.run(fill())
    assert options_type is faust_adapter._SharedMemoryOptions
    assert memtables > 0, "the memtables count against the shared budget"
    assert cached > 0, "blocks read are held in the shared cache"


def test_a_flush_empties_the_partition_s_memtables_and_keeps_what_they_held(tmp_path):
    """After a restore the clock flushes the states' partitions: what the restore left in memtables is freed."""
    async def write_then_flush() -> tuple[int, int, bytes | None]:
        app = create_app(Settings(app_id="test-adapter-flush", data_dir=str(tmp_path), partitions=2))
        table = app.Table("f", default=None, partitions=2, key_type=bytes, value_type=bytes)
        db = faust_adapter.partition_db(table, 1)
        for i in range(2_000):
            db.put(f"k{i}".encode(), b"x" * 200)
        held = db.property_int_value("rocksdb.num-entries-active-mem-table")
        faust_adapter.flush(table, 1)
        return held, db.property_int_value("rocksdb.num-entries-active-mem-table"), faust_adapter.read_raw(table, b"k7", 1)

    held, after, value = asyncio.run(write_then_flush())
    assert held == 2_000 and after == 0
    assert value == b"x" * 200


def test_a_scan_leaves_the_shared_block_cache_to_the_reads(tmp_path):
    """The clock's index is rebuilt by scanning every state of a partition: each block is read once, so it is
    kept out of the block cache (a worker holding a million users had it full right after the scan)."""
    from streams.states import SharedMemory

    shared = SharedMemory(cache_mb=8, memtables_mb=16)

    async def scan_then_read() -> tuple[int, int, int]:
        app = create_app(Settings(app_id="test-adapter-scan", data_dir=str(tmp_path), partitions=1))
        table = app.Table("s", default=None, partitions=1, key_type=bytes, value_type=bytes,
                          options={"shared_memory": shared})
        db = faust_adapter.partition_db(table, 0)
        for i in range(3_000):
            db.put(f"k{i}".encode(), b"x" * 500)
        db.flush()
        before = shared.cache.get_usage()
        scanned = sum(1 for _ in faust_adapter.scan(table, 0))
        after_scan = shared.cache.get_usage()
        assert all(faust_adapter.read_raw(table, f"k{i}".encode(), 0) for i in range(0, 3_000, 7))
        return scanned, after_scan - before, shared.cache.get_usage() - after_scan

    scanned, by_scan, by_reads = asyncio.run(scan_then_read())
    assert scanned == 3_000
    assert by_reads > 100_000, "reads fill the cache (so the check below can fail)"
    assert by_scan < by_reads / 10, "the scan did not"


def test_a_new_recovery_waits_two_quiet_spells_of_its_own_before_the_first_counts(tmp_path):
    """Faust counts quiet spells in a loop that outlives each recovery, so when a new recovery starts the count
    is already past its guard: the first spell would mark partitions done by their consumer position while their
    records were still on the way to the queue, and drop them on arrival (the x10 chaos run's stale states).
    The recovery's queue reports no quiet spell until it has been quiet for two spells since the recovery began."""
    from faust.tables import recovery as recovery_module

    source = inspect.getsource(recovery_module)
    assert "timeout_count > 1" in source and "timeout_count = 0" in source  # the guard this completes
    assert "self._recovery_started_at = monotonic()" in source

    async def scenario() -> tuple[float, str, float]:
        app = create_app(Settings(app_id="test-quiet-again", data_dir=str(tmp_path)))
        app.GlobalTable("quiet-again", partitions=1)
        faust_adapter.recover_past_transaction_markers(app, idle_s=0.2)
        recovery = app.tables.recovery
        queue = recovery.tables.changelog_queue
        with pytest.raises(asyncio.TimeoutError):  # idle, no recovery: a spell counts as before
            await queue.get()
        recovery.in_recovery, recovery._recovery_started_at = True, time.monotonic()  # a recovery starts
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.3, app.tables.changelog_queue.put_nowait, "late record")
        item = await queue.get()  # before: TimeoutError at 0.2 s, with the record still on its way
        got_at = time.monotonic() - started
        with pytest.raises(asyncio.TimeoutError):
            await queue.get()
        quiet_after = time.monotonic() - started - got_at
        return got_at, item, quiet_after

    got_at, item, quiet_after = asyncio.run(scenario())
    assert item == "late record" and 0.25 < got_at < 1.0
    assert 0.35 < quiet_after < 1.5, "then quiet for two spells since the last record, and only then"


@pytest.mark.parametrize("key", ["user-1", "ü-ser", 'a"b', "x\\y", "€😀", "tab\there", ""])
def test_the_json_key_is_the_one_faust_s_key_serializer_makes(tmp_path, key):
    """Preferences and presence are read by key without Faust's serializer layers: the bytes must be Faust's."""
    async def both() -> tuple[bytes, bytes]:
        app = create_app(Settings(app_id="test-adapter-key", data_dir=str(tmp_path), partitions=1))
        table = app.Table("preferences", default=None, partitions=1)
        return faust_adapter.encode_key(table, key), faust_adapter.json_key(key)

    faust_s, ours = asyncio.run(both())
    assert ours == faust_s


def test_the_hook_before_the_tables_recovery_is_awaited_before_the_recovery_is_signalled(tmp_path):
    """Faust signals ``on_partitions_assigned`` after the tables' rebalance has started their recovery; the hook
    runs before it, and finishes (even when slow) before the recovery is told which partitions to restore."""
    from faust.app.base import App
    from faust.tables.manager import TableManager

    source = inspect.getsource(App._on_partitions_assigned)
    # the tables' rebalance is looked up on the manager at each assignment, and before the signal is sent
    assert "await T(self.tables.on_rebalance)(" in source
    assert source.index("self.tables.on_rebalance") < source.index("self.on_partitions_assigned.send")
    assert "await T(self.recovery.on_rebalance)(" in inspect.getsource(TableManager.on_rebalance)

    order: list[str] = []

    async def scenario() -> None:
        app = create_app(Settings(app_id="test-before-recovery", data_dir=str(tmp_path)))
        recovery = app.tables.recovery

        async def recovery_on_rebalance(assigned, revoked, newly_assigned, generation_id=0) -> None:
            order.append(f"recovery {sorted(tp.partition for tp in assigned)} generation {generation_id}")

        async def slow_hook(assigned) -> None:
            order.append("hook started")
            await asyncio.sleep(0.2)  # what a claim of transactional producers takes, or more
            order.append("hook done")

        async def replaced(assigned) -> None:
            order.append("the first hook, replaced")

        async def no_consumer() -> None:  # the manager asks the consumer (not started here) for its assignment
            order.append("channels")

        recovery.on_rebalance = recovery_on_rebalance
        app.tables._update_channels = no_consumer
        faust_adapter.guard_table_recovery(app, replaced)
        faust_adapter.guard_table_recovery(app, slow_hook)  # replaces, does not stack
        tps = {faust_adapter.TP("t.preferences", 0), faust_adapter.TP("t.preferences", 2)}
        await app.tables.on_rebalance(tps, set(), tps, 7)

    asyncio.run(scenario())
    assert order == ["hook started", "hook done", "channels", "recovery [0, 2] generation 7"]



def test_only_the_recovery_of_the_current_assignment_resumes_the_worker(tmp_path):
    """A recovery that ends after a rebalance began (before the next assignment reaches the tables), or that
    belongs to an earlier assignment, neither resumes the streams nor clears ``app.rebalancing``; the recovery
    of the assignment in force does."""
    from faust.tables.recovery import Recovery

    recovery_source = inspect.getsource(Recovery)
    assert "await self._wait(T(self.on_recovery_completed)(generation_id))" in recovery_source
    assert "self.app.on_rebalance_end()" in inspect.getsource(Recovery.on_recovery_completed)
    completed: list[int] = []

    async def scenario() -> tuple[bool, ...]:
        app = create_app(Settings(app_id="test-current-recovery", data_dir=str(tmp_path)))
        recovery = app.tables.recovery

        async def faust_s_completion(generation_id: int = 0) -> None:  # what resumes the worker
            completed.append(generation_id)
            app.on_rebalance_end()

        async def nothing(*args: Any) -> None:
            pass

        recovery.on_recovery_completed = faust_s_completion
        recovery.on_rebalance = nothing
        app.tables._update_channels = nothing
        faust_adapter.guard_table_recovery(app, nothing)
        tps = {faust_adapter.TP("t.preferences", 0)}
        seen = []
        app.on_rebalance_start()
        await app.tables.on_rebalance(tps, set(), tps, 5)
        app.on_rebalance_start()  # a rebalance begins (the worker was stopped, its partitions moved)
        await recovery.on_recovery_completed(5)  # generation 5's recovery ends meanwhile
        seen.append(app.rebalancing)
        await app.tables.on_rebalance(tps, set(), tps, 6)
        await recovery.on_recovery_completed(5)  # or only once the next assignment has begun
        seen.append(app.rebalancing)
        await recovery.on_recovery_completed(6)
        seen.append(app.rebalancing)
        return tuple(seen)

    assert asyncio.run(scenario()) == (True, True, False)
    assert completed == [6]
