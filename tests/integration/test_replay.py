"""``herald replay`` against a running worker on the real broker and registry.

- A range of herald.events replayed into the pipeline is safe: events already decided come out
  DEDUPLICATED, and no delivery request with a new delivery_id appears.
- ``--dlq`` re-drives a dead letter that passes its check now (it reaches the events topic with its
  headers and ``herald.replayed.from``, and is decided), and refuses one that still fails and a sink's
  final delivery, sending neither; and one dead-lettered for real (TOO_LARGE) is refused until the limit
  is raised, then re-driven and decided.
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from herald import dlq
from infra.common import REPO_ROOT
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_policy_pipeline import Stage, ev, now_ms

pytestmark = pytest.mark.integration
SMALL_LIMIT = 4096  # bytes: the worker's event size limit until the last test raises it


@pytest.fixture(scope="module")
def stage(stack, tmp_path_factory):
    unique = f"rp{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(unique, tmp_path_factory.mktemp("replay"), free_port()).prepare()
    pipeline.env["HERALD_MAX_EVENT_BYTES"] = str(SMALL_LIMIT)  # raised by the last test, as an operator would
    pipeline.start("worker")
    s = Stage(pipeline)
    yield s
    s.close()
    pipeline.stop()


def herald(stage: Stage, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "replay", *argv], cwd=REPO_ROOT, env=stage.p.env,
                          capture_output=True, text=True, timeout=180)


def wait_until(check, timeout: float, what: str, dump=lambda: ""):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout:g} s\n{dump()}")


def records(stage: Stage, name: str) -> list:
    """Every record of ``name`` now, from the beginning."""
    topic = stage.settings.topic(name)
    consumer = Consumer({"bootstrap.servers": stage.settings.kafka_bootstrap, "group.id": f"chk-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(stage.settings.partitions)])
    out, ends = [], set()
    while len(ends) < stage.settings.partitions:
        for msg in consumer.consume(500, 1.0):
            if msg.error():
                ends.add(msg.partition())
            else:
                out.append(msg)
    consumer.close()
    return out


def test_a_replayed_range_of_decided_events_is_deduplicated_and_makes_no_new_delivery(stage):
    users = [f"{stage.unique}-d{i}" for i in range(4)]
    started = now_ms()
    events = [ev(u, f"e{j}", priority="HIGH", batchable=False) for u in users for j in range(3)]
    events += [ev(u, "batched") for u in users]  # NORMAL and batchable: goes out in a batch
    stage.send(*events)
    for e in events:
        wait_until(lambda e=e: stage.out.of(e["user_id"], e["event_id"], final=True), 60,
                   f"final decision for {e['event_id']}", lambda: stage.out.dump(*users))
    before = {r["delivery_id"] for u in users for r in stage.out.sent(u)}
    assert before, "the events were delivered somewhere"
    decided = {e["event_id"]: len(stage.out.of(e["user_id"], e["event_id"])) for e in events}

    result = herald(stage, "--from", str(started), "--until", str(now_ms()))  # herald.events into herald.events
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(events)} records from {stage.settings.topic('events')} to " \
           f"{stage.settings.topic('events')}" in result.stderr

    for e in events:
        again = wait_until(lambda e=e: stage.out.of(e["user_id"], e["event_id"])[decided[e["event_id"]]:], 60,
                           f"a decision on the replayed {e['event_id']}", lambda: stage.out.dump(*users))
        assert [d["outcome"] for d in again] == ["DEDUPLICATED"], stage.out.dump(e["user_id"])
    copies: dict[bytes, set[int]] = {}
    for m in records(stage, "events"):
        copies.setdefault(m.value(), set()).add(m.timestamp()[1])
    assert all(len(times) == 1 for times in copies.values()), "a replayed record keeps its original timestamp"
    time.sleep(3)  # a batch window and a few ticks: anything released by the replay would be out now
    after = {r["delivery_id"] for u in users for r in stage.out.sent(u)}
    assert after == before, stage.out.dump(*users)


def test_dead_letters_that_pass_now_are_redriven_and_those_that_fail_are_refused(stage):
    s = stage.settings
    events_topic, dlq_topic = s.topic("events"), s.topic("dlq")
    # a dead letter the worker makes: keyed by another user than its user_id, it still fails validation
    bad = ev(f"{stage.unique}-bad", "bad")
    stage.producer.produce(events_topic, key=b"someone-else", value=stage.codec.encode(
        f"{events_topic}-value", "NotificationEvent", bad))
    # a valid event dead-lettered by a pipeline bug since fixed, with a header of its producer's
    good = ev(f"{stage.unique}-good", "good", priority="HIGH", batchable=False)
    stage.producer.produce(dlq_topic, key=good["user_id"].encode(),
                           value=stage.codec.encode(f"{events_topic}-value", "NotificationEvent", good),
                           headers=dlq.headers("INTERNAL", "RuntimeError: a bug", "pipeline", events_topic, 0, 7,
                                               [("traceparent", b"00-trace")]))
    # a delivery the in-app sink gave up on: final in the ledger
    stage.producer.produce(dlq_topic, key=b"u", value=b"request",
                           headers=dlq.headers("MAX_ATTEMPTS", "x", "sink-inapp", s.topic("delivery.inapp"), 0, 3))
    assert stage.producer.flush(10) == 0
    wait_until(lambda: any(m.key() == b"someone-else" for m in records(stage, "dlq")), 60, "the worker's dead letter")
    letters = {m.key(): m for m in records(stage, "dlq")}
    assert len(letters) == 3

    only = herald(stage, "--dlq", "--reason", "VALIDATION", "--dry-run", "--quiet")
    assert only.returncode == 1 and "would re-drive 0 of 3" in only.stderr and "2 of other reasons left" in only.stderr
    assert "refused 1 (1 VALIDATION)" in only.stderr, only.stderr

    result = herald(stage, "--dlq")
    assert result.returncode == 1, result.stderr  # something was refused
    assert f"re-drove 1 of 3 dead letters from {dlq_topic} (1 to {events_topic}); refused 2 " \
           "(1 DELIVERY_FINAL, 1 VALIDATION)" in result.stderr, result.stderr
    where = letters[b"someone-else"]
    assert f"refused {dlq_topic}:{where.partition()}:{where.offset()} (VALIDATION): the record key does not match" \
           in result.stderr
    assert bad["title"] not in result.stderr and "someone-else" not in result.stderr  # places, not contents

    decision = wait_until(lambda: stage.out.of(good["user_id"], good["event_id"], final=True), 60,
                          "a decision on the re-driven event", lambda: stage.out.dump(good["user_id"]))
    assert decision[0]["outcome"] == "ROUTED"
    redriven = [m for m in records(stage, "events") if dict(m.headers() or []).get(replayed_from := "herald.replayed.from")]
    assert len(redriven) == 1, "only the one that passes is sent"
    headers = dict(redriven[0].headers())
    source = letters[good["user_id"].encode()]
    assert headers[replayed_from] == f"{dlq_topic}:{source.partition()}:{source.offset()}".encode()
    assert headers["traceparent"] == b"00-trace" and headers["herald.source.offset"] == b"7"
    assert not [k for k in headers if k.startswith("herald.error.")]
    assert stage.out.of(bad["user_id"]) == [], "the refused one was not decided"


def test_a_dead_letter_is_refused_until_its_cause_is_fixed_then_redriven_and_decided(stage):
    """The worker dead-letters an event over HERALD_MAX_EVENT_BYTES; re-driving it fails the same check until
    the operator raises the limit (and restarts the worker), then it goes back and is decided."""
    big = ev(f"{stage.unique}-big", "big", priority="HIGH", batchable=False, body="x" * (SMALL_LIMIT + 500))
    stage.send(big)
    wait_until(lambda: [m for m in records(stage, "dlq") if m.key() == big["user_id"].encode()], 60,
               "the worker's TOO_LARGE dead letter")

    still = herald(stage, "--dlq", "--reason", "TOO_LARGE", "--quiet")
    assert still.returncode == 1 and "re-drove 0 of" in still.stderr and "refused 1 (1 TOO_LARGE)" in still.stderr, \
        still.stderr

    stage.p.env["HERALD_MAX_EVENT_BYTES"] = str(SMALL_LIMIT * 4)
    stage.p.kill("worker")
    stage.p.start("worker")
    fixed = herald(stage, "--dlq", "--reason", "TOO_LARGE", "--quiet")
    assert fixed.returncode == 0 and "re-drove 1 of" in fixed.stderr, fixed.stderr
    decision = wait_until(lambda: stage.out.of(big["user_id"], big["event_id"], final=True), 90,
                          "a decision on the re-driven event", lambda: stage.out.dump(big["user_id"]))
    assert decision[0]["outcome"] == "ROUTED"
