"""From a standard Avro producer to PostgreSQL and the API, through the real broker, registry and database.

The producing side uses only confluent-kafka and the contract's schema, as a team's own service would.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.conftest import free_port
from tests.integration.harness import Pipeline

pytestmark = pytest.mark.integration

# What a producer team writes from CONTRACT.md: no Herald code, no docs, its own formatting.
PRODUCER_SCHEMA = json.dumps({
    "type": "record", "name": "NotificationEvent", "namespace": "herald", "fields": [
        {"name": "event_id", "type": "string"}, {"name": "user_id", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "priority", "type": {"type": "enum", "name": "Priority", "symbols": ["CRITICAL", "HIGH", "NORMAL", "LOW"]}},
        {"name": "title", "type": "string"}, {"name": "body", "type": "string"},
        {"name": "data", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "dedup_key", "type": ["null", "string"], "default": None},
        {"name": "batchable", "type": "boolean", "default": True},
        {"name": "channels", "type": ["null", {"type": "array", "items": {"type": "enum", "name": "Channel",
                                                                          "symbols": ["EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET"]}}],
         "default": None},
        {"name": "deliver_after", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "cancel_key", "type": ["null", "string"], "default": None},
    ]})


def standard_producer(bootstrap: str, registry_url: str, topic: str):
    """A plain confluent-kafka producer with the stock AvroSerializer (auto-registering)."""
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), PRODUCER_SCHEMA)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def send(event: dict) -> None:
        value = serializer(event, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=event["user_id"].encode(), value=value)
        producer.poll(0)
    return send, producer


def make_event(user_id: str, n: int, **over) -> dict:
    return {"event_id": f"{user_id}-e{n}-{uuid.uuid4().hex[:6]}", "user_id": user_id, "type": "TASK_DEADLINE",
            "priority": "NORMAL", "title": f"Task {n} due", "body": "Soon", "data": {"entity_id": f"task-{n}"},
            "occurred_at": int(time.time() * 1000), "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None, **over}


async def rows_for(dsn: str, users: list[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT notification_id, user_id, event_ids, title FROM notifications "
                                "WHERE user_id = ANY($1::text[])", users)
    finally:
        await conn.close()


def wait_for_rows(dsn: str, users: list[str], expected: int, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    rows: list = []
    while time.monotonic() < deadline:
        rows = asyncio.run(rows_for(dsn, users))
        if len(rows) >= expected:
            time.sleep(1.5)  # anything extra (a duplicate) would arrive now
            return asyncio.run(rows_for(dsn, users))
        time.sleep(0.5)
    return rows


def api_get(port: int, path: str, token: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def pipeline(stack, tmp_path_factory):
    unique = f"e2e{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path_factory.mktemp("logs"), free_port()).prepare()
    for name in ("worker", "sink", "api"):
        p.start(name)
    yield p
    p.stop()


def test_a_standard_producer_event_reaches_postgres_and_the_unread_count(pipeline, unique):
    from api.auth import mint, signing_secret

    settings = pipeline.settings
    users = [f"{unique}-alice", f"{unique}-bob"]
    send, producer = standard_producer(settings.kafka_bootstrap, settings.schema_registry_url, settings.topic("events"))
    base = int(time.time() * 1000) - 10_000
    events = [make_event(users[0], n, occurred_at=base + n) for n in range(3)] + [make_event(users[1], 0)]
    for e in events:
        send(e)
    send(events[0])  # a producer retry: same event_id
    assert producer.flush(10) == 0

    rows = wait_for_rows(settings.database_url, users, len(events))
    assert sorted(r["event_ids"][0] for r in rows) == sorted(e["event_id"] for e in events)
    token = mint(signing_secret(settings), users[0])
    assert api_get(settings.api_port, f"/v1/users/{users[0]}/unread-count", token) == {
        "user_id": users[0], "unread": 3, "unseen": 3}
    page = api_get(settings.api_port, f"/v1/users/{users[0]}/notifications?limit=2", token)
    assert [n["title"] for n in page["notifications"]] == ["Task 2 due", "Task 1 due"]
    rest = api_get(settings.api_port, f"/v1/users/{users[0]}/notifications?limit=2&cursor={page['next_cursor']}", token)
    assert [n["title"] for n in rest["notifications"]] == ["Task 0 due"] and rest["next_cursor"] is None


def test_the_api_refuses_another_users_token(pipeline, unique):
    from api.auth import mint, signing_secret

    token = mint(signing_secret(pipeline.settings), f"{unique}-mallory")
    with pytest.raises(urllib.error.HTTPError) as info:
        api_get(pipeline.settings.api_port, f"/v1/users/{unique}-alice/unread-count", token)
    assert info.value.code == 403
    assert json.loads(info.value.read())["error"]["code"] == "FORBIDDEN"


def test_reading_lowers_the_unread_count(pipeline, unique):
    from api.auth import mint, signing_secret

    settings = pipeline.settings
    user = f"{unique}-reader"
    send, producer = standard_producer(settings.kafka_bootstrap, settings.schema_registry_url, settings.topic("events"))
    for n in range(2):
        send(make_event(user, n))
    producer.flush(10)
    rows = wait_for_rows(settings.database_url, [user], 2)
    token = mint(signing_secret(settings), user)
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.api_port}/v1/users/{user}/notifications/{rows[0]['notification_id']}/read",
        method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert json.loads(r.read())["unread"] == 1
    request = urllib.request.Request(f"http://127.0.0.1:{settings.api_port}/v1/users/{user}/notifications/read-all",
                                     method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert json.loads(r.read()) == {"user_id": user, "unread": 0, "unseen": 0}
