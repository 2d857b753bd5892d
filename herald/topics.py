"""Herald's topics: their names, what each carries, and how they are created."""
from __future__ import annotations

from dataclasses import dataclass

from herald.enums import CHANNELS
from herald.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str          # without the prefix
    schema: str | None  # the value schema, None for raw bytes (the dead-letter topic)
    compacted: bool = False


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("events", "NotificationEvent"),
    *(TopicSpec(f"delivery.{c.lower()}", "DeliveryRequest") for c in CHANNELS),
    TopicSpec("delivery.status", "DeliveryStatus"),
    TopicSpec("decisions", "Decision"),
    TopicSpec("reads", "ReadEvent"),
    TopicSpec("preferences", "Preferences", compacted=True),
    TopicSpec("presence", "Presence"),
    TopicSpec("contacts", "Contact", compacted=True),
    TopicSpec("dlq", None),
)


def ticks_topic(settings: Settings) -> str:
    return f"{settings.app_id}-ticks"


def delivery_topic(settings: Settings, channel: str) -> str:
    return settings.topic(f"delivery.{channel.lower()}")


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every Herald topic that does not exist yet (idempotent); return the full names."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    wanted = [NewTopic(settings.topic(s.name), num_partitions=settings.partitions, replication_factor=1,
                       config={"cleanup.policy": "compact"} if s.compacted else {}) for s in SPECS]
    # the pipeline's clock: co-partitioned with the events, so a tick on partition p releases p's users
    wanted.append(NewTopic(ticks_topic(settings), num_partitions=settings.partitions, replication_factor=1,
                           config={"retention.ms": "3600000"}))
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return [t.topic for t in wanted]


def register_schemas(settings: Settings, registry=None) -> dict[str, int]:
    """Register every topic's value schema under `<topic>-value` with BACKWARD_TRANSITIVE; return the ids."""
    from schemas.registry import Registry

    registry = registry or Registry(settings.schema_registry_url)
    return {settings.topic(s.name): registry.register(f"{settings.topic(s.name)}-value", s.schema)
            for s in SPECS if s.schema}
