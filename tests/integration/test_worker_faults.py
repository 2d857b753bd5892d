"""Faults of the worker shell found in review, each driven through the real broker and registry: bad input
or a failed part never stalls a partition, skips the records behind it or loses a user's state."""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from agents.preferences import defaults
from herald.kafka import home_partition
from tests.integration.test_ingest_catalogue import consume_all
from tests.integration.test_policy_pipeline import Stage, ev, new_pipeline, now_ms, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(stack, tmp_path_factory):
    p = new_pipeline(tmp_path_factory, "flt")
    try:
        p.start("worker")
        stage = Stage(p)
        yield stage
        stage.close()
    finally:
        p.stop()


def dead_letters(stage: Stage, expected: int) -> list:
    return consume_all(stage.settings.kafka_bootstrap, stage.settings.topic("dlq"), expected, timeout=60)


def test_a_record_too_large_to_dead_letter_whole_neither_stops_nor_skips_the_events_behind_it(worker):
    """5 valid events, one record of ~1 MB, 10 valid events, produced together for one user: the large one
    is dead-lettered (cut, with a header saying so) and all 15 valid events are decided."""
    user = f"{worker.unique}-big"
    s = worker.settings
    topic = s.topic("events")
    first = [ev(user, f"before{i}", channels=["INAPP"]) for i in range(5)]
    after = [ev(user, f"after{i}", channels=["INAPP"]) for i in range(10)]
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "message.max.bytes": 2_000_000, "linger.ms": 50})
    part = home_partition(user.encode(), s.partitions)
    encode = lambda e: worker.codec.encode(f"{topic}-value", "NotificationEvent", e)  # noqa: E731
    for e in first:
        producer.produce(topic, encode(e), user.encode(), partition=part)
    producer.produce(topic, b"\x00" + b"x" * 1_000_499, user.encode(), partition=part, headers=[("case", b"big")])
    for e in after:
        producer.produce(topic, encode(e), user.encode(), partition=part)
    assert producer.flush(20) == 0

    wanted = {e["event_id"] for e in first + after}
    decided = wait_for(lambda: wanted <= set(worker.out.finals(user)) and worker.out.finals(user), 60,
                       "a final decision for each of the 15 valid events", worker.out, user)
    assert set(decided) == wanted
    big = [m for m in dead_letters(worker, 1) if dict(m.headers() or []).get("case") == b"big"]
    assert len(big) == 1
    headers = {k: v.decode() for k, v in big[0].headers()}
    assert headers["herald.error.reason"] == "TOO_LARGE"
    assert headers["herald.error.truncated"] == "1000500"
    assert len(big[0].value()) < 1_000_000 and big[0].value() == (b"\x00" + b"x" * 1_000_499)[:len(big[0].value())]
    assert worker.p.procs["worker"].poll() is None, "the worker is still alive"


def test_control_characters_are_refused_at_intake_with_a_reason(worker):
    user = f"{worker.unique}-nul"
    bad = ev(user, "nul", title="a\u0000b", channels=["INAPP"])
    good = ev(user, "ok", body="two\nlines\tand a tab", channels=["INAPP"])
    worker.send(bad, good)
    wait_for(lambda: worker.out.of(user, good["event_id"], final=True), 30, "the valid event's decision", worker.out, user)
    letters = [m for m in dead_letters(worker, 1) if m.key() == user.encode()]
    assert [dict(m.headers())["herald.error.reason"] for m in letters] == [b"VALIDATION"]
    assert not worker.out.of(user, bad["event_id"])


def test_a_preferences_record_with_an_unknown_zone_is_dead_lettered_and_the_previous_ones_kept(worker):
    """Mars/Olympus used to make every scheduled event of that user fail as INTERNAL."""
    user = f"{worker.unique}-mars"
    worker.preferences(user, {"timezone": "Europe/Paris", "types": {"COMMENT": False}})
    bad = {**defaults(user), "timezone": "Mars/Olympus", "max_batch_size": -1, "updated_at": now_ms()}
    worker._produce("preferences", user, "Preferences", bad)
    assert worker.producer.flush(10) == 0
    letters = wait_for(lambda: [m for m in dead_letters(worker, 1) if m.key() == user.encode()], 60,
                       "the bad preferences' dead letter")
    headers = {k: v.decode() for k, v in letters[0].headers()}
    assert headers["herald.error.reason"] == "VALIDATION" and headers["herald.error.stage"] == "preferences"
    assert "timezone" in headers["herald.error.message"] and "max_batch_size" in headers["herald.error.message"]
    scheduled = ev(user, "sched", deliver_after=now_ms() + 3_600_000, channels=["INAPP"])
    comment = ev(user, "comment", type="COMMENT")
    worker.send(scheduled, comment)
    first = wait_for(lambda: worker.out.of(user, scheduled["event_id"]), 30, "the scheduled event's decision",
                     worker.out, user)[0]
    assert first["outcome"] == "SCHEDULED" and "Europe/Paris" in first["reason"], first
    suppressed = wait_for(lambda: worker.out.of(user, comment["event_id"], final=True), 30, "the comment's decision",
                          worker.out, user)[0]
    assert suppressed["outcome"] == "SUPPRESSED_PREFERENCE", "the previous preferences are still in force"


def test_a_replayed_event_lands_on_its_users_home_partition(worker, tmp_path):
    """``herald replay`` produces with Kafka's default partitioner, as producers do."""
    import subprocess
    import sys

    from infra.common import REPO_ROOT

    s = worker.settings
    source = f"{worker.unique}.replay-src"
    target = f"{worker.unique}.replay-dst"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(t, 4, 1) for t in (source, target)]).values():
        future.result(30)
    users = [f"{worker.unique}-r{i}" for i in range(20)]
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for i, u in enumerate(users):
        producer.produce(source, b"v", u.encode(), partition=i % 4)  # deliberately not the home partition
    assert producer.flush(10) == 0
    result = subprocess.run([sys.executable, "-m", "streams.cli", "replay", source, "--to", target],
                            cwd=REPO_ROOT, env=worker.p.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"chk-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([target])
    got, deadline = [], time.monotonic() + 30
    while len(got) < len(users) and time.monotonic() < deadline:
        got += [m for m in consumer.consume(100, 0.5) if not m.error()]
    consumer.close()
    assert sorted(m.key().decode() for m in got) == sorted(users)
    assert all(m.partition() == home_partition(m.key(), 4) for m in got)


def test_the_worker_serves_its_metrics_with_bounded_labels(worker):
    """Counts by partition, outcome, channel and reason; readings of lag and users due; no user id anywhere."""
    import urllib.request

    from herald.metrics import served_ports

    user = f"{worker.unique}-metrics"
    worker.send(ev(user, "m1", channels=["INAPP"]), ev(user, "m2", channels=["INAPP"]))
    wait_for(lambda: len(worker.out.finals(user)) >= 2, 30, "two decisions", worker.out, user)
    entry = wait_for(lambda: [e for e in served_ports() if e["app_id"] == worker.settings.app_id], 30,
                     "the worker's metrics port noted in the state folder")[0]
    assert entry["pid"] == worker.p.procs["worker"].pid

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{entry['port']}/metrics", timeout=5) as r:
            return r.read().decode()

    def routed_counted() -> str | None:
        text = scrape()
        return text if 'outcome="ROUTED"' in text else None

    text = wait_for(routed_counted, 30, "ROUTED decisions counted")
    routed = [line for line in text.splitlines() if line.startswith("herald_worker_decisions_total{")
              and 'outcome="ROUTED"' in line and 'final="true"' in line]
    assert routed and float(routed[0].rsplit(" ", 1)[1]) >= 2
    assert 'herald_worker_delivery_requests_total{channel="INAPP",kind="SINGLE"}' in text
    assert "herald_worker_batch_seconds_bucket" in text and "herald_worker_rocksdb_bytes" in text
    assert "herald_worker_unread_events{" in text and "herald_worker_due_users{" in text
    assert 'herald_worker_dead_letters_total{reason="TOO_LARGE",stage="ingest"}' in text  # from the test above
    assert worker.unique not in text, "no user id in any label"
