"""The producer guide's Python example runs as written and its events reach Herald's topic, decodable."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Consumer

from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra.common import REPO_ROOT
from schemas.codec import Codec
from schemas.registry import Registry

GUIDE = REPO_ROOT / "docs" / "producers.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert blocks, "the guide has a Python example"
    return blocks[0]


@pytest.mark.integration
def test_the_python_example_publishes_events_herald_can_read(stack, tmp_path):
    unique = f"doc{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.")
    ensure_topics(settings)
    register_schemas(settings)
    script = tmp_path / "example.py"
    script.write_text(python_example())
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HERALD_EVENTS_TOPIC": settings.topic("events")})
    assert result.returncode == 0, result.stderr
    sent = result.stdout.split()[1:]
    assert len(sent) == 2

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{unique}-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.topic("events")])
    codec = Codec(Registry(settings.schema_registry_url))
    seen = []
    for _ in range(40):
        seen += [codec.decode(m.value(), "NotificationEvent") for m in consumer.consume(10, 0.5) if not m.error()]
        if len(seen) >= 2:
            break
    consumer.close()
    assert sorted(e["event_id"] for e in seen) == sorted(sent)
    assert {e["user_id"] for e in seen} == {"user-42"} and seen[0]["dedup_key"] is None
