"""Bad input never stops the pipeline: each kind of bad record is dead-lettered with its reason, byte for
byte, and the agent goes on to process the valid events that follow it. Against the real broker and registry."""
from __future__ import annotations

import json
import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from schemas.codec import Codec
from schemas.loader import load_schema
from schemas.registry import Registry
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import make_event

pytestmark = pytest.mark.integration


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60, count=len) -> list:
    """Every record of ``topic`` once ``count(records)`` reaches ``expected`` (or time runs out), plus any
    that arrive in the two seconds after: a duplicate would."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and count(out) < expected:
            for msg in consumer.consume(500, 0.5):
                if not msg.error():
                    out.append(msg)
        # anything beyond what was expected would show up now
        end = time.monotonic() + 2
        while time.monotonic() < end:
            out.extend(m for m in consumer.consume(500, 0.3) if not m.error())
    finally:
        consumer.close()
    return out


def evolved_schema(**changes) -> str:
    """The contract's NotificationEvent with some change a newer producer might make."""
    schema = load_schema("NotificationEvent")
    if "extra_priority" in changes:
        for f in schema["fields"]:
            if f["name"] == "priority":
                f["type"] = {**f["type"], "symbols": [*f["type"]["symbols"], changes["extra_priority"]]}
    if "optional_field" in changes:
        schema["fields"].append({"name": changes["optional_field"], "type": ["null", "string"], "default": None})
    return json.dumps(schema)


@pytest.fixture
def running(stack, tmp_path_factory):
    """A worker on topics of this test's own, so each test's schema history starts from the contract."""
    unique = f"ing{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path_factory.mktemp("logs"), free_port()).prepare()
    p.start("worker")
    yield p
    p.stop()


def test_every_kind_of_bad_record_is_dead_lettered_and_the_stream_goes_on(running):
    settings = running.settings
    topic = settings.topic("events")
    subject = f"{topic}-value"
    codec = Codec(Registry(settings.schema_registry_url))
    client = SchemaRegistryClient({"url": settings.schema_registry_url})
    user = f"{running.settings.topic_prefix}u"
    good = make_event(user, 0)
    valid = codec.encode(subject, "NotificationEvent", good)

    # a newer producer's schema: one more Priority symbol (compatible, so the registry accepts it)
    newer_id = client.register_schema(subject, Schema(evolved_schema(extra_priority="URGENT"), "AVRO"))
    newer = load_schema("NotificationEvent")
    for f in newer["fields"]:
        if f["name"] == "priority":
            f["type"]["symbols"].append("URGENT")
    import io

    import fastavro
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, newer_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), {**make_event(user, 1), "priority": "URGENT"})
    urgent = buf.getvalue()

    decision_subject = f"{settings.topic('decisions')}-value"
    other_schema = codec.encode(decision_subject, "Decision", {
        "event_id": "x", "user_id": user, "outcome": "ROUTED", "channels": [], "delivery_id": None, "reason": "r", "at": 1})
    now = int(time.time() * 1000)
    schema_id = valid[1:5]

    cases = [  # (name, key, value, expected reason)
        ("not avro", user.encode(), b"hello, world: definitely not avro", "INVALID_MAGIC_BYTE"),
        ("first byte 1", user.encode(), b"\x01" + valid[1:], "INVALID_MAGIC_BYTE"),
        ("under 5 bytes", user.encode(), b"\x00\x00\x01", "INVALID_MAGIC_BYTE"),
        ("unknown schema id", user.encode(), b"\x00" + struct.pack(">I", 987_654_321) + valid[5:], "SCHEMA_NOT_FOUND"),
        ("body does not decode", user.encode(), b"\x00" + schema_id + b"\xff\xff\xff\xff\xff\xff\x01", "DECODE_ERROR"),
        ("tombstone", user.encode(), None, "TOMBSTONE"),
        ("empty user_id", b"", codec.encode(subject, "NotificationEvent", {**good, "user_id": ""}), "VALIDATION"),
        ("empty event_id", user.encode(), codec.encode(subject, "NotificationEvent", {**good, "event_id": ""}), "VALIDATION"),
        ("newer enum symbol", user.encode(), urgent, "DECODE_ERROR"),
        ("too large", user.encode(), codec.encode(subject, "NotificationEvent", {**good, "body": "x" * 300_000}), "TOO_LARGE"),
        ("far future", user.encode(), codec.encode(subject, "NotificationEvent", {**good, "occurred_at": now + 10 * 86_400_000}), "VALIDATION"),
        ("before 2000", user.encode(), codec.encode(subject, "NotificationEvent", {**good, "occurred_at": 946_684_799_000}), "VALIDATION"),
        ("10,000 data entries", user.encode(), codec.encode(subject, "NotificationEvent",
                                                            {**good, "data": {f"k{i}": "v" for i in range(10_000)}}), "VALIDATION"),
        ("key not UTF-8", b"\xff\xfe\xfd", valid, "VALIDATION"),
        ("another subject's schema", user.encode(), other_schema, "SCHEMA_MISMATCH"),
        ("JSON body", user.encode(), json.dumps(good).encode(), "INVALID_MAGIC_BYTE"),
        ("key is another user", b"someone-else", valid, "VALIDATION"),
    ]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": 2_000_000})
    # everything to one partition, in order, followed by valid events: the agent must get past each bad one
    for i, (name, key, value, _) in enumerate(cases):
        producer.produce(topic, key=key, value=value, partition=0, headers=[("case", name.encode())])
        producer.produce(topic, key=user.encode(), partition=0,
                         value=codec.encode(subject, "NotificationEvent", make_event(user, 100 + i)))
    assert producer.flush(10) == 0

    dead = consume_all(settings.kafka_bootstrap, settings.topic("dlq"), len(cases))
    decisions = [d for d in (codec.decode(m.value(), "Decision") for m in consume_all(
        settings.kafka_bootstrap, settings.topic("decisions"), len(cases),
        count=lambda msgs: sum(codec.decode(m.value(), "Decision")["final"] for m in msgs))) if d["final"]]
    by_case = {dict(m.headers())["case"].decode(): m for m in dead}
    assert sorted(by_case) == sorted(name for name, *_ in cases), "each bad record dead-lettered exactly once"
    for name, key, value, reason in cases:
        msg = by_case[name]
        headers = {k: v.decode() for k, v in msg.headers()}
        assert headers["herald.error.reason"] == reason, (name, headers)
        assert headers["herald.error.stage"] == "ingest" and headers["herald.source.topic"] == topic
        assert int(headers["herald.source.partition"]) == 0 and headers["herald.error.message"]
        assert msg.key() == key and msg.value() == value, f"{name}: the original bytes are kept"
    assert len(decisions) == len({d["event_id"] for d in decisions}) == len(cases), \
        "every valid event after a bad one has exactly one final decision"
    assert len(decisions) + len(dead) == 2 * len(cases), "inputs = decisions + dead letters, exactly"
    assert running.procs["worker"].poll() is None, "the worker is still alive"


def test_old_and_new_producers_both_flow_and_a_breaking_schema_is_refused(running):
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    settings = running.settings
    topic = settings.topic("events")
    subject = f"{topic}-value"
    client = SchemaRegistryClient({"url": settings.schema_registry_url})
    assert client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"
    # a new producer adds an optional field: accepted
    new_id = client.register_schema(subject, Schema(evolved_schema(optional_field="tenant"), "AVRO"))
    # a breaking producer adds a required field with no default: refused
    breaking = load_schema("NotificationEvent")
    breaking["fields"].append({"name": "tenant_required", "type": "string"})
    with pytest.raises(SchemaRegistryError) as info:
        client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert info.value.http_status_code == 409

    import io

    import fastavro
    user = f"{settings.topic_prefix}evo"
    codec = Codec(Registry(settings.schema_registry_url))
    old_bytes = codec.encode(subject, "NotificationEvent", make_event(user, 1))
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, new_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(evolved_schema(optional_field="tenant"))),
                               {**make_event(user, 2), "tenant": "acme"})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(topic, key=user.encode(), value=old_bytes)
    producer.produce(topic, key=user.encode(), value=buf.getvalue())
    producer.flush(10)
    def finals(msgs):
        return [d for d in (codec.decode(m.value(), "Decision") for m in msgs if m.key() == user.encode()) if d["final"]]
    mine = finals(consume_all(settings.kafka_bootstrap, settings.topic("decisions"), 2, count=lambda m: len(finals(m))))
    assert sorted(d["event_id"].split("-")[-2] for d in mine) == ["e1", "e2"]
    assert {d["outcome"] for d in mine} == {"BATCHED"}, "NORMAL, offline: in-app now, push and email batched"
