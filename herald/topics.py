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


def pipeline_group(settings: Settings) -> str:
    """The consumer group the worker commits its events and ticks offsets to (``streams.feed``; no members)."""
    return f"{settings.app_id}-pipeline"


def delivery_topic(settings: Settings, channel: str) -> str:
    return settings.topic(f"delivery.{channel.lower()}")


def check_replication(settings: Settings) -> tuple[int, int]:
    """``(replication factor, min.insync.replicas)`` for the topics Herald creates, validated: both at least 1
    and min.insync.replicas at most the replication factor (a topic that could never take a write)."""
    rf, isr = settings.topic_replication_factor, settings.topic_min_insync_replicas
    if rf < 1:
        raise ValueError(f"HERALD_TOPIC_REPLICATION_FACTOR={rf} must be at least 1 (1 on the local stack, 3 on a "
                         "production cluster)")
    if not 1 <= isr <= rf:
        raise ValueError(f"HERALD_TOPIC_MIN_INSYNC_REPLICAS={isr} must be between 1 and "
                         f"HERALD_TOPIC_REPLICATION_FACTOR={rf} (2 with a replication factor of 3)")
    return rf, isr


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic Herald creates (full names, the worker's clock included) with its topic configuration."""
    _, isr = check_replication(settings)
    base = {"min.insync.replicas": str(isr)}
    wanted = {settings.topic(s.name): {**base, **({"cleanup.policy": "compact"} if s.compacted else {})} for s in SPECS}
    # the pipeline's clock: co-partitioned with the events, so a tick on partition p releases p's users
    wanted[ticks_topic(settings)] = {**base, "retention.ms": "3600000"}
    return wanted


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every Herald topic that does not exist yet (idempotent); return the full names.

    New topics get ``HERALD_PARTITIONS`` partitions, ``HERALD_TOPIC_REPLICATION_FACTOR`` replicas and
    ``HERALD_TOPIC_MIN_INSYNC_REPLICAS``; existing ones are left as they are (``replication_warnings`` reports
    those below what a cluster of several brokers should have). A replication factor above the cluster's
    broker count fails with the broker's error."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from herald.kafka import client_config

    rf, _ = check_replication(settings)
    admin = AdminClient(client_config(settings))
    wanted = [NewTopic(name, num_partitions=settings.partitions, replication_factor=rf, config=config)
              for name, config in topic_configs(settings).items()]
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return [t.topic for t in wanted]


# what a topic should have on a cluster of at least PRODUCTION_BROKERS brokers
PRODUCTION_BROKERS, PRODUCTION_REPLICAS, PRODUCTION_MIN_ISR = 3, 3, 2


def weak_topics(brokers: int, topics: dict[str, tuple[int, int]]) -> list[str]:
    """One warning per topic below ``PRODUCTION_REPLICAS`` replicas or ``PRODUCTION_MIN_ISR`` min.insync.replicas,
    given ``{topic: (replication factor, min.insync.replicas)}``; none on a cluster of fewer than
    ``PRODUCTION_BROKERS`` brokers, where those cannot be had (the local stack's single broker)."""
    if brokers < PRODUCTION_BROKERS:
        return []
    out = []
    for name, (rf, isr) in sorted(topics.items()):
        low = [f"{what} {have} < {want}" for what, have, want in (("replication factor", rf, PRODUCTION_REPLICAS),
                                                                 ("min.insync.replicas", isr, PRODUCTION_MIN_ISR))
               if have < want]
        if low:
            out.append(f"{name}: {', '.join(low)} on a {brokers}-broker cluster: one broker lost can lose or "
                       "block its records (recreate it, or raise them with kafka-reassign-partitions / kafka-configs)")
    return out


def replication_warnings(settings: Settings, timeout: float = 10.0) -> list[str]:
    """``weak_topics`` for the Herald topics as the cluster has them now (``cluster_replication``)."""
    brokers, topics = cluster_replication(settings, timeout)
    return weak_topics(brokers, topics)


def cluster_replication(settings: Settings, timeout: float = 10.0) -> tuple[int, dict[str, tuple[int, int]]]:
    """The cluster's broker count and ``{topic: (replication factor, min.insync.replicas)}`` for the Herald
    topics (those under ``HERALD_TOPIC_PREFIX``, and the worker's clock): replicas from the metadata (the
    fewest of any partition), min.insync.replicas from each topic's effective configuration."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from herald.kafka import client_config

    admin = AdminClient(client_config(settings))
    meta = admin.list_topics(timeout=timeout)
    names = [n for n in meta.topics if n.startswith(settings.topic_prefix) or n == ticks_topic(settings)]
    topics: dict[str, tuple[int, int]] = {}
    if not names:
        return len(meta.brokers), topics
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        isr_entry = future.result(timeout).get("min.insync.replicas")
        partitions = meta.topics[resource.name].partitions.values()
        rf = min((len(p.replicas) for p in partitions), default=0)
        topics[resource.name] = (rf, int(isr_entry.value) if isr_entry is not None and isr_entry.value else 1)
    return len(meta.brokers), topics


def register_schemas(settings: Settings, registry=None) -> dict[str, int]:
    """Register every topic's value schema under `<topic>-value` with BACKWARD_TRANSITIVE; return the ids."""
    from schemas.registry import Registry

    registry = registry or Registry.from_settings(settings)
    return {settings.topic(s.name): registry.register(f"{settings.topic(s.name)}-value", s.schema)
            for s in SPECS if s.schema}
