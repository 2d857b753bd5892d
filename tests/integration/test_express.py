"""The CRITICAL lane (``streams.express``, ``agents.lane``) on a real broker and a real worker.

- A record sent by ``Outbox.express`` can be read (by a reader of committed records only) while the batch's
  transaction is still open on its partition: the transaction's records are produced at its commit, so
  they do not hold it up.
- A CRITICAL event produced behind a backlog on its partition is decided ahead of it: its delivery request
  is written before most of the backlog's events ahead of it are decided, once only, and its one decision is kept
  when the pipeline reads it later.
"""
from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from herald.kafka import home_partition
from herald.metrics import served_ports
from herald.settings import Settings
from herald.topics import delivery_topic, ensure_topics
from schemas.codec import Codec
from schemas.registry import Registry
from streams.express import Watcher
from streams.outbox import Outbox
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import make_event

pytestmark = pytest.mark.integration


def _reader(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    return consumer


def _values(consumer: Consumer, want: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [m.value() for m in consumer.consume(100, 0.2) if not m.error()]
    return got


def test_an_express_record_is_readable_while_the_batchs_transaction_is_open(stack):
    unique = f"expr{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.", app_id=f"{unique}-pipeline")
    ensure_topics(settings)
    topic = delivery_topic(settings, "PUSH")
    outbox = Outbox(settings, linger_ms=5, transactional_id=settings.app_id)
    outbox.defer([topic])
    outbox.claim([0])
    outbox.send(topic, b"user", b"in the transaction", source=0)
    time.sleep(0.5)  # well past the linger: a record produced at ``send`` would be on the broker by now
    outbox.express(topic, b"user", b"express")  # the same key: the same partition
    reader = _reader(settings.kafka_bootstrap, topic)
    try:
        assert _values(reader, 1, 15) == [b"express"], "the express record waited for the open transaction"
        asyncio.run(outbox.commit())
        assert _values(reader, 1, 15) == [b"in the transaction"]
    finally:
        reader.close()


def _all(bootstrap: str, topics: list[str], until, timeout: float = 90) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            out += [m for m in consumer.consume(1000, 0.5) if not m.error()]
        end = time.monotonic() + 2  # a repeat would show up now
        while time.monotonic() < end:
            out += [m for m in consumer.consume(1000, 0.3) if not m.error()]
    finally:
        consumer.close()
    return out


def _start_with_lane(p: Pipeline) -> None:
    """Start the worker and wait for its CRITICAL lane's reader. "Ready" comes before the group assigns the
    partitions: events produced before the reader starts (at the partitions' end) are not in the lane."""
    p.start("worker")
    deadline = time.monotonic() + 60
    while "the CRITICAL lane reads partitions" not in p.log("worker").read_text(errors="replace"):
        assert time.monotonic() < deadline, "the worker's CRITICAL lane did not start"
        time.sleep(0.1)


def test_a_critical_event_behind_a_backlog_is_decided_ahead_of_it_once(stack, tmp_path):
    unique = f"expr{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path, free_port()).prepare()
    settings = p.settings
    topic = settings.topic("events")
    codec = Codec(Registry(settings.schema_registry_url))
    subject = f"{topic}-value"
    users = [u for u in (f"{unique}-u{i}" for i in range(40_000)) if home_partition(u.encode(), settings.partitions) == 0]
    critical_user = next(u for u in (f"{unique}-c{i}" for i in range(100))
                         if home_partition(u.encode(), settings.partitions) == 0)
    backlog = [make_event(users[i % len(users)], i, channels=["INAPP"], batchable=False) for i in range(20_000)]
    # the CRITICAL event's user has an event just past the backlog's middle: it goes ahead with it, first
    earlier = make_event(critical_user, 1, channels=["INAPP"], batchable=False)
    backlog.insert(len(backlog) // 2 + 1, earlier)
    critical = make_event(critical_user, 0, priority="CRITICAL", channels=["PUSH"])
    values = [codec.encode(subject, "NotificationEvent", e) for e in backlog]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20})
    try:
        _start_with_lane(p)
        for event, value in zip(backlog, values):
            producer.produce(topic, value, event["user_id"].encode(), partition=0)
            producer.poll(0)
        producer.produce(topic, codec.encode(subject, "NotificationEvent", critical), critical_user.encode(), partition=0)
        assert producer.flush(30) == 0
        decisions_topic = settings.topic("decisions")
        push = delivery_topic(settings, "PUSH")

        def decided(records: list) -> bool:
            return sum(m.topic() == decisions_topic for m in records) >= len(backlog) + 1

        records = _all(settings.kafka_bootstrap, [decisions_topic, push], decided)
        entry = [e for e in served_ports() if e["app_id"] == settings.app_id]
        with urllib.request.urlopen(f"http://127.0.0.1:{entry[0]['port']}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        p.stop()
    decisions = [(m, codec.decode(m.value(), "Decision")) for m in records if m.topic() == decisions_topic]
    requests = [(m, codec.decode(m.value(), "DeliveryRequest")) for m in records if m.topic() == push]
    critical_decisions = [d for _, d in decisions if d["event_id"] == critical["event_id"]]
    assert len(critical_decisions) == 1 and critical_decisions[0]["outcome"] == "ROUTED", critical_decisions
    before = [(m, d) for m, d in decisions if d["event_id"] == earlier["event_id"]]
    assert len(before) == 1 and before[0][1]["outcome"] == "ROUTED", before  # decided once, ahead or not
    mine = sorted((m.partition(), m.offset(), d["event_id"]) for m, d in decisions if d["user_id"] == critical_user)
    assert [event_id for _, _, event_id in mine] == [earlier["event_id"], critical["event_id"]], "not in its order"
    sent = [(m, r) for m, r in requests if critical["event_id"] in r["event_ids"]]
    assert len(sent) == 1, f"the CRITICAL request was written {len(sent)} times"
    # far more events ahead than one batch holds (``HERALD_TAKE_MAX``): a CRITICAL event that overtakes only
    # its own batch (``agents.order``) is decided after this one
    well_ahead = backlog[len(backlog) // 2]["event_id"]
    ahead = next(m for m, d in decisions if d["event_id"] == well_ahead)
    assert sent[0][0].timestamp()[1] < ahead.timestamp()[1], (
        "the CRITICAL request was written after half the events ahead of it were decided: it waited for them")
    expressed = [line for line in metrics.splitlines() if line.startswith("herald_worker_expressed_requests_total ")]
    assert expressed and float(expressed[0].split()[1]) >= 1
    timed = [line for line in metrics.splitlines() if line.startswith("herald_worker_critical_wait_seconds_count ")]
    assert timed and float(timed[0].split()[1]) >= 1, "the CRITICAL event decided ahead was not timed"


def test_a_quiet_lane_reads_an_event_as_it_arrives_not_when_its_fetch_wait_ends(stack):
    # The lane's reader (and the feed) fetch with a long wait so that a quiet worker does not keep the
    # broker busy; that is only free if a record arriving ends the wait, which this checks on the real broker.
    unique = f"expr{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.", app_id=f"{unique}-pipeline", fetch_max_wait_ms=30_000)
    ensure_topics(settings)
    topic = settings.topic("events")
    codec = Codec(Registry(settings.schema_registry_url))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    for partition in range(settings.partitions):  # the new topic's partitions have their leader before the reader asks
        producer.produce(topic, b"not an event", partition=partition)
    assert producer.flush(30) == 0
    watcher = Watcher(settings, topic, codec)
    watcher.assign(range(settings.partitions))
    watcher.start()
    try:
        deadline = time.monotonic() + 60
        while not watcher.inbox:  # the reader starts at the partitions' end: send until it has read one
            assert time.monotonic() < deadline, "the lane's reader read nothing"
            producer.produce(topic, codec.encode(f"{topic}-value", "NotificationEvent", make_event(f"{unique}-u", 0)),
                             f"{unique}-u".encode())
            producer.flush(10)
            time.sleep(0.5)
        time.sleep(2)  # the reader's fetch now waits on quiet partitions
        watcher.inbox.clear()
        critical = make_event(f"{unique}-c", 1, priority="CRITICAL", channels=["PUSH"])
        producer.produce(topic, codec.encode(f"{topic}-value", "NotificationEvent", critical), critical["user_id"].encode())
        producer.flush(10)
        sent = time.monotonic()
        while not watcher.inbox and time.monotonic() - sent < 30:
            time.sleep(0.01)
        waited = time.monotonic() - sent
        entries = list(watcher.inbox)
    finally:
        watcher.stop()
    assert [(e[3], e[4][1]["event_id"]) for e in entries] == [(critical["user_id"], critical["event_id"])]
    assert waited < 10, f"read {waited:.1f} s after it was sent: the 30 s fetch wait held it"


def test_a_critical_event_reaching_an_idle_worker_is_decided_before_its_pipeline_fetch_returns(stack, tmp_path):
    # The feed gathers (HERALD_FETCH_MIN_BYTES) for up to HERALD_FETCH_MAX_WAIT_MS: here far longer than the
    # test waits, so the only way the CRITICAL request goes out in time is the lane deciding it between batches.
    unique = f"expr{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path, free_port())
    p.env.update({"HERALD_FETCH_MAX_WAIT_MS": "50000", "HERALD_FETCH_MIN_BYTES": "200000"})
    p.prepare()
    settings = p.settings
    topic, subject = settings.topic("events"), f"{settings.topic('events')}-value"
    codec = Codec(Registry(settings.schema_registry_url))
    users = [u for u in (f"{unique}-u{i}" for i in range(20_000)) if home_partition(u.encode(), settings.partitions) == 0]
    critical_user = next(u for u in (f"{unique}-c{i}" for i in range(100))
                         if home_partition(u.encode(), settings.partitions) == 0)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20})
    decisions_topic, push = settings.topic("decisions"), delivery_topic(settings, "PUSH")

    def burst(n: int, tag: int) -> None:  # more bytes than the feed gathers for: its fetch returns
        for i in range(n):
            event = make_event(users[i % len(users)], tag * 100_000 + i, channels=["INAPP"], batchable=False)
            producer.produce(topic, codec.encode(subject, "NotificationEvent", event), event["user_id"].encode(), partition=0)
            producer.poll(0)
        assert producer.flush(30) == 0

    try:
        _start_with_lane(p)
        burst(3000, 1)  # decided, so the lane knows the pipeline stands at the partition's end
        _all(settings.kafka_bootstrap, [decisions_topic], lambda out: len(out) >= 3000)
        time.sleep(1)
        critical = make_event(critical_user, 0, priority="CRITICAL", channels=["PUSH"])
        producer.produce(topic, codec.encode(subject, "NotificationEvent", critical), critical_user.encode(), partition=0)
        assert producer.flush(30) == 0
        sent = time.monotonic()
        ahead = _all(settings.kafka_bootstrap, [push],
                     lambda out: any(critical["event_id"] in codec.decode(m.value(), "DeliveryRequest")["event_ids"]
                                     for m in out), timeout=30)
        waited = time.monotonic() - sent
        burst(3000, 2)  # the feed's fetch returns: the batch reads the CRITICAL event and commits its decision
        records = _all(settings.kafka_bootstrap, [decisions_topic, push],
                       lambda out: sum(m.topic() == decisions_topic for m in out) >= 6001)
    finally:
        p.stop()
    assert any(critical["event_id"] in codec.decode(m.value(), "DeliveryRequest")["event_ids"] for m in ahead), (
        "no CRITICAL request within 30 s: it waited for the pipeline's fetch")
    assert waited < 15, f"the CRITICAL request took {waited:.1f} s"
    decisions = [codec.decode(m.value(), "Decision") for m in records if m.topic() == decisions_topic]
    assert [d["outcome"] for d in decisions if d["event_id"] == critical["event_id"]] == ["ROUTED"]
    requests = [codec.decode(m.value(), "DeliveryRequest") for m in records if m.topic() == push]
    assert sum(critical["event_id"] in r["event_ids"] for r in requests) == 1
