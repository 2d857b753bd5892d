"""``herald produce`` and ``herald tail`` as a user runs them, against the real broker and registry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra.common import REPO_ROOT

pytestmark = pytest.mark.integration


def herald(*args: str, env: dict, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


@pytest.fixture
def topics(stack):
    unique = f"cli{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.")
    ensure_topics(settings)
    register_schemas(settings)
    return settings, {"HERALD_TOPIC_PREFIX": f"{unique}."}


def test_produce_reports_bad_lines_by_number_and_publishes_the_rest(topics, tmp_path):
    settings, env = topics
    lines = [
        json.dumps({"user_id": "u1", "type": "COMMENT", "title": "Hi", "body": "One", "event_id": "a"}),
        "{not json",
        json.dumps({"user_id": "u1", "type": "COMMENT", "title": "Hi"}),
        "",
        json.dumps({"user_id": "u2", "type": "TASK_DEADLINE", "title": "Due", "body": "Two", "priority": "high",
                    "event_id": "b", "occurred_at": "2026-11-01T09:00:00Z"}),
    ]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = herald("produce", str(source), env=env)
    assert result.returncode == 1, "a bad line makes the exit code 1"
    assert f"{source}:2: not JSON" in result.stderr and f"{source}:3: missing body" in result.stderr
    assert "Traceback" not in result.stderr
    assert "produced 2 events" in result.stderr and "2 bad lines skipped" in result.stderr

    tail = herald("tail", settings.topic("events"), "--from-beginning", "--no-follow", env=env)
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    by_id = {r["value"]["event_id"]: r for r in records}
    assert sorted(by_id) == ["a", "b"]
    assert by_id["b"]["key"] == "u2" and by_id["b"]["value"]["priority"] == "HIGH"
    assert by_id["b"]["value"]["occurred_at"].startswith("2026-11-01T09:00:00")


def test_produce_count_and_tail_max_and_dead_letters(topics):
    settings, env = topics
    result = herald("produce", "--demo", "--count", "30", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert "produced 30 events" in result.stderr
    tail = herald("tail", settings.topic("events"), "--from-beginning", "--max", "5", env=env)
    assert len(tail.stdout.splitlines()) == 5
    # a dead letter shows its reason headers and the original bytes
    from confluent_kafka import Producer

    from herald.dlq import headers

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topic("dlq"), key=b"u9", value=b"{oops",
                     headers=headers("INVALID_MAGIC_BYTE", "first byte is 123", "ingest", settings.topic("events"), 0, 7))
    producer.flush(10)
    out = herald("tail", settings.topic("dlq"), "--from-beginning", "--no-follow", env=env)
    record = json.loads(out.stdout.splitlines()[0])
    assert record["dead_letter"]["herald.error.reason"] == "INVALID_MAGIC_BYTE"
    assert record["dead_letter"]["herald.source.offset"] == "7" and record["value_bytes"] == "{oops"


def test_tail_of_a_missing_topic_says_so(topics):
    _, env = topics
    result = herald("tail", "no.such.topic", "--from-beginning", "--no-follow", env=env)
    assert result.returncode == 2 and "no topic 'no.such.topic'" in result.stderr
