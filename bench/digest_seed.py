"""A worker's state for the digest benchmark, written to its users changelog before the worker starts.

The digest figure is the time from a period's end to the last digest emitted, on a worker that holds
every user's state (1,000,000 by default). Taking in one event per user through the pipeline would
cost more time than the whole benchmark has, so the users' states are made here instead, and the
worker restores them from its changelog as it would after losing its disk:

- each state is what the pipeline writes after one LOW event for that user in the chosen digest
  period: ``agents.policy.on_event`` itself computes it (no template), with the worker's settings;
- it is encoded as the pipeline encodes it (the user id as the key, the state as JSON) and produced to the table's
  changelog topic on the user's home partition (Kafka's murmur2 partitioner), created compacted as the
  worker would create it.

Two processes share the work (one per core; policy and encoding are pure Python).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

FIELDS = {"type": "COMMENT", "priority": "LOW", "title": "New comment", "body": "Someone replied to your comment.",
          "dedup_key": None, "batchable": True, "channels": None, "deliver_after": None, "cancel_key": None}


def changelog_topic(app_id: str) -> str:
    """Faust's name for the users table's changelog."""
    from streams.states import STATES_TABLE

    return f"{app_id}-{STATES_TABLE}-changelog"


def _seed_range(args: tuple[Any, int, int, int, str]) -> int:
    settings, first, last, at_ms, prefix = args
    from confluent_kafka import Producer

    from agents import policy
    from agents.preferences import effective
    from herald.kafka import client_config, home_partition
    from streams.config import policy_config

    config = policy_config(settings)
    producer = Producer({**client_config(settings), "linger.ms": 20, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
    topic = changelog_topic(settings.app_id)
    source = settings.topic("events")
    parts = settings.partitions
    for i in range(first, last):
        user = f"{prefix}{i}"
        event = {"event_id": f"dg-{i}", "user_id": user, "data": {"entity_id": str(i)}, "occurred_at": at_ms, **FIELDS}
        out = policy.on_event(None, event, effective(None, user), False, at_ms, f"{source}:seed:{i}", config)
        key = user.encode()
        while True:
            try:
                producer.produce(topic, orjson.dumps(out.state), key, partition=home_partition(key, parts))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} seeded states were not acknowledged by the broker")
    return last - first


def seed(settings: Any, users: int, at_ms: int, prefix: str = "digest-user-", processes: int | None = None) -> dict:
    """Write ``users`` states (one LOW event each, at ``at_ms``) to the users changelog of ``settings.app_id``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from herald.kafka import client_config
    from streams.states import COMPACTED

    admin = AdminClient(client_config(settings))
    topic = changelog_topic(settings.app_id)
    futures = admin.create_topics([NewTopic(topic, settings.partitions, 1,
                                            config={"cleanup.policy": "compact", **COMPACTED})])
    futures[topic].result(30)
    started = time.monotonic()
    processes = max(1, min(processes or os.cpu_count() or 1, 4))
    step = -(-users // processes)
    ranges = [(settings, lo, min(users, lo + step), at_ms, prefix) for lo in range(0, users, step)]
    with ProcessPoolExecutor(len(ranges)) as pool:
        written = sum(pool.map(_seed_range, ranges))
    seconds = time.monotonic() - started
    return {"digest_seeded_states": written, "digest_seed_s": round(seconds, 2),
            "digest_seed_states_per_s": round(written / seconds, 1) if seconds > 0 else None}
