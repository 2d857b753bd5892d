"""The Faust application: one app, its topics (raw bytes; Herald's codec decodes) and its tables."""
from __future__ import annotations

from pathlib import Path

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from herald.paths import subdir
from schemas.codec import Codec
from schemas.faust_codec import AvroCodec
from schemas.registry import Registry
from herald.settings import Settings
from herald.topics import CHANNELS


_faust_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _worker_consumer(self: AIOKafkaConsumerThread, transport: object) -> object:
    """Faust's aiokafka consumer with HERALD_FETCH_MAX_WAIT_MS instead of the 1,500 ms Faust hard-codes.

    aiokafka keeps one fetch in flight per broker and leaves out of it the partitions that still have
    records buffered; when the fetch in flight holds only quiet partitions (ticks, preferences,
    presence), the broker parks it for the whole wait, and events that arrive meanwhile on the
    partitions left out are not fetched until it returns: CRITICAL events waited ~1 s that way."""
    consumer = _faust_worker_consumer(self, transport)
    herald = getattr(self.app.conf, "herald", None)
    if herald is not None:
        consumer._fetch_max_wait_ms = herald.fetch_max_wait_ms  # read when the consumer starts its fetcher
    return consumer


AIOKafkaConsumerThread._create_worker_consumer = _worker_consumer


def create_app(settings: Settings | None = None, codec: Codec | None = None) -> faust.App:
    """A Faust app on the aiokafka transport with RocksDB tables (rocksdict), at-least-once."""
    settings = settings or Settings.from_env()
    codec = codec or Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
    if settings.data_dir:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder
    app = faust.App(
        settings.app_id,
        broker=f"aiokafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=settings.data_dir or str(subdir("faust", settings.app_id)),
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
        # a new owner restores users' states (~1 KB each) from the changelog: fetch in big bites
        consumer_max_fetch_size=16 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
        table_standby_replicas=settings.standby_replicas,
        # a worker killed with -9 holds its partitions until its session expires: keep that short
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    app.conf.herald = settings  # type: ignore[attr-defined]
    def avro(name: str, schema: str) -> faust.TopicT:
        topic = settings.topic(name)
        return app.topic(topic, key_type=bytes, value_serializer=AvroCodec(codec, f"{topic}-value", schema))

    app.herald_topics = {  # type: ignore[attr-defined]
        # raw bytes in: a record that does not decode is dead-lettered by the agent, not raised by Faust
        "events": app.topic(settings.topic("events"), key_type=bytes, value_type=bytes),
        "preferences": app.topic(settings.topic("preferences"), key_type=bytes, value_type=bytes),
        "presence": app.topic(settings.topic("presence"), key_type=bytes, value_type=bytes),
        "dlq": app.topic(settings.topic("dlq"), key_type=bytes, value_type=bytes),
        "decisions": avro("decisions", "Decision"),
        **{f"delivery.{c.lower()}": avro(f"delivery.{c.lower()}", "DeliveryRequest") for c in CHANNELS},
    }
    return app
