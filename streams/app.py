"""The Faust application: one app, its topics (raw bytes; Herald's codec decodes) and its tables."""
from __future__ import annotations

from pathlib import Path

import faust

from herald.kafka import faust_credentials
from herald.paths import subdir
from herald.settings import Settings
from streams import faust_adapter


def create_app(settings: Settings | None = None) -> faust.App:
    """A Faust app on the aiokafka transport with RocksDB tables (rocksdict), at-least-once. Topics are read
    as raw bytes: Herald's codec decodes them, so a record that does not decode is dead-lettered, not raised."""
    settings = settings or Settings.from_env()
    faust_adapter.install_fetch_max_wait()
    faust_adapter.install_resume_after_suspension()
    faust_adapter.install_seek_forgetting_read_offsets()
    faust_adapter.install_exact_gaps()
    faust_adapter.install_shared_rocksdb_memory()
    if settings.data_dir:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder
    app = faust.App(
        settings.app_id,
        broker=f"aiokafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=settings.data_dir or str(subdir("faust", settings.app_id)),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        web_enabled=False,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        # a new owner restores users' states (~1 KB each) from the changelog: fetch in big bites
        consumer_max_fetch_size=16 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
        table_standby_replicas=settings.standby_replicas,
        # a worker killed with -9 holds its partitions until its session expires: keep that short
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # static membership when named: a restarted worker takes its partitions back without a rebalance
        consumer_group_instance_id=settings.worker_instance_id or None,
    )
    app.conf.herald = settings  # type: ignore[attr-defined]
    return app
