"""Every private Faust/aiokafka name the worker relies on still exists: an upgrade that removes one fails
here, not in a running worker."""
from __future__ import annotations

import asyncio
import inspect

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
    assert hasattr(AIOKafkaConsumerThread, "_create_worker_consumer")
    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "_key_index" in inspect.getsource(Store.__init__)
    from faust.streams import _current_event  # noqa: F401 - importable is the check

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
        faust_adapter.note_key_partition(table, b"k", 1)
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
