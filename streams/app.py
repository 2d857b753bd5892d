"""The Faust application: one app, its topics (raw bytes; Herald's codec decodes) and its tables."""
from __future__ import annotations

import faust

from infra.common import subdir
from streams.settings import Settings
from streams.topics import CHANNELS


def create_app(settings: Settings | None = None) -> faust.App:
    """A Faust app on the aiokafka transport with RocksDB tables (rocksdict), at-least-once."""
    settings = settings or Settings.from_env()
    app = faust.App(
        settings.app_id,
        broker=f"aiokafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=str(subdir("faust", settings.app_id)),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        web_enabled=False,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
        # a worker killed with -9 holds its partitions until its session expires: keep that short
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    app.conf.herald = settings  # type: ignore[attr-defined]
    app.herald_topics = {  # type: ignore[attr-defined]
        "events": app.topic(settings.topic("events"), key_type=bytes, value_type=bytes),
        "decisions": app.topic(settings.topic("decisions"), key_type=bytes, value_type=bytes),
        "dlq": app.topic(settings.topic("dlq"), key_type=bytes, value_type=bytes),
        **{f"delivery.{c.lower()}": app.topic(settings.topic(f"delivery.{c.lower()}"), key_type=bytes, value_type=bytes)
           for c in CHANNELS},
    }
    return app
