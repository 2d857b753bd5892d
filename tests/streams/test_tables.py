"""The worker's tables' changelog topics are created as durable as Herald's other topics."""
from __future__ import annotations

import asyncio

from herald.settings import Settings
from streams.states import COMPACTED, shared_memory
from streams.worker import create_worker


def test_every_changelog_carries_min_insync_replicas(tmp_path):
    async def configs() -> dict[str, dict]:
        settings = Settings.from_env(app_id="test-tables-isr", data_dir=str(tmp_path), topic_replication_factor=3,
                                     topic_min_insync_replicas=2)
        app = create_worker(settings, register=False)
        return {name: dict(table.changelog_topic.config or {}) for name, table in app.tables.items()}

    got = asyncio.run(configs())
    assert set(got) == {"states", "preferences", "presence"}
    assert {name: config.get("min.insync.replicas") for name, config in got.items()} == {
        "states": "2", "preferences": "2", "presence": "2"}
    assert COMPACTED.items() <= got["states"].items()  # the states' own segment and size settings kept


def test_every_table_opens_rocksdb_with_herald_sized_memtables_and_cache(tmp_path):
    """Faust's RocksDB defaults (64 MB memtables x 3 and a 2 GB block cache for each partition of each table)
    cost about 660 MB for a million users' states in a measurement; every table takes Herald's sizes."""

    async def options() -> dict[str, tuple]:
        settings = Settings.from_env(app_id="test-tables-rocksdb", data_dir=str(tmp_path),
                                     rocksdb_write_buffer_mb=4, rocksdb_block_cache_mb=12)
        app = create_worker(settings, register=False)
        found = {}
        for name, table in app.tables.items():
            o = table.data.rocksdb_options
            found[name] = (o.write_buffer_size, o.max_write_buffer_number, o.block_cache_size)
            o.as_options()  # what opening a partition's database builds from them
        return found

    mb = 1024 * 1024
    assert asyncio.run(options()) == {name: (4 * mb, 2, 12 * mb) for name in ("states", "preferences", "presence")}


def test_every_table_shares_one_block_cache_and_memtable_budget(tmp_path):
    async def shared() -> set[int]:
        settings = Settings.from_env(app_id="test-tables-shared", data_dir=str(tmp_path),
                                     rocksdb_block_cache_mb=12, rocksdb_memtables_mb=24)
        app = create_worker(settings, register=False)
        return {id(table.data.rocksdb_options.extra_options["shared_memory"]) for table in app.tables.values()}

    found = asyncio.run(shared())
    assert len(found) == 1
    memory = shared_memory(Settings(rocksdb_block_cache_mb=12, rocksdb_memtables_mb=24))
    assert id(memory) in found and memory.write_buffers.get_buffer_size() == 24 * 1024 * 1024
