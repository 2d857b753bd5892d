"""``herald replay`` against a running worker on the real broker and registry.

- A range of herald.events replayed into the pipeline is safe: events already decided come out
  DEDUPLICATED, and no delivery request with a new delivery_id appears.
- An hour of events (stamped over the last hour, so most are past their dedup window) delivered by email
  through the worker and the email sink to a real SMTP server, then replayed: every event is left out as
  already decided, the SMTP server receives zero new messages and no delivery request is written again.
  The same hour replayed from an archive topic that also holds three events the pipeline never saw: only
  those three go in, are decided and reach the SMTP server once each.
- With ``--include-decided``, events replayed within their dedup window come out DEDUPLICATED.
- ``--dlq`` re-drives a dead letter that passes its check now (it reaches the events topic with its
  headers and ``herald.replayed.from``, and is decided), and refuses one that still fails and a sink's
  final delivery, sending neither; and one dead-lettered for real (TOO_LARGE) is refused until the limit
  is raised, then re-driven and decided.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from herald import dlq
from infra.common import REPO_ROOT
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_policy_pipeline import Stage, ev, now_ms
from tests.sinks.helpers import Server

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


def mail_users(stage: Stage) -> list[str]:
    return [f"{stage.unique}-m{i}" for i in range(3)]


@pytest.fixture(scope="module")
def mail(stage, tmp_path_factory):
    """A mail catcher on free ports and ``herald sink email`` sending to it, with the stage's settings."""
    logdir = tmp_path_factory.mktemp("mail")
    contacts = stage.settings.topic("contacts")
    for u in mail_users(stage):  # before the sink starts: it reads every contact before its first request
        stage.producer.produce(contacts, key=u.encode(), value=stage.codec.encode(f"{contacts}-value", "Contact", {
            "user_id": u, "email": f"{u}@example.test", "phone": None, "push_tokens": [], "locale": None,
            "updated_at": now_ms()}))
    assert stage.producer.flush(10) == 0
    catcher = Server("infra.mailcatcher", logdir)
    env = {**stage.p.env, "HERALD_SMTP_URL": f"smtp://127.0.0.1:{catcher.port}", "HERALD_SINK_METRICS_PORT": "-1",
           "HERALD_SINK_RETRY_BASE_S": "0.2", "HERALD_SINK_RETRY_MAX_S": "1"}
    log = logdir / "sink-email.log"
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "email"], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: proc.poll() is not None or "consuming" in log.read_text(errors="replace"), 90,
               "the email sink consuming", lambda: log.read_text(errors="replace")[-3000:])
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    yield catcher, log
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)
    catcher.stop()


def sink_caught_up(stage: Stage) -> bool:
    """The email sink's consumer group has committed past every email request the stage's reader has seen
    (the high watermark is no measure: the worker writes in transactions, whose markers take offsets too)."""
    topic, s = stage.settings.topic("delivery.email"), stage.settings
    last: dict[int, int] = {}
    for r in list(stage.out.requests):
        if r["_where"][0] == topic:
            last[r["_where"][1]] = max(last.get(r["_where"][1], -1), r["_where"][2])
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"{s.app_id}-sink-email",
                         "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in last], timeout=10)
        return all(tp.offset > last[tp.partition] for tp in committed)
    finally:
        consumer.close()


def test_an_hour_delivered_by_email_then_replayed_reaches_the_mail_server_zero_more_times(stage, mail):
    catcher, sink_log = mail
    users = mail_users(stage)
    s = stage.settings
    started = now_ms() - 3_600_000
    events_topic = s.topic("events")
    events = []
    # over the last hour, a few minutes apart: each user's HIGH events go out alone (EMAIL among others), the
    # NORMAL batchable ones in batches; most are older than the dedup window when they are replayed
    for j, minutes_ago in enumerate((58, 50, 41, 33, 24, 16, 9, 3, 1)):
        at = now_ms() - minutes_ago * 60_000
        for u in users:
            e = ev(u, f"h{j}", occurred_at=at, priority="HIGH" if j % 2 else "NORMAL", batchable=not j % 2)
            events.append(e)
            stage.producer.produce(events_topic, key=u.encode(), timestamp=at,
                                   value=stage.codec.encode(f"{events_topic}-value", "NotificationEvent", e))
    assert stage.producer.flush(10) == 0
    for e in events:
        wait_until(lambda e=e: stage.out.of(e["user_id"], e["event_id"], final=True), 60,
                   f"final decision for {e['event_id']}", lambda: stage.out.dump(*users))

    def emails() -> list[dict]:
        return [r for r in stage.out.requests if r["user_id"] in users and r["channel"] == "EMAIL"]

    def caught() -> list[dict]:
        return [m for m in catcher.get("/messages") if any(u in rcpt for u in users for rcpt in m["rcpt_tos"])]

    sent_ids = wait_until(lambda: {r["delivery_id"] for r in emails()} or None, 30, "email delivery requests")
    wait_until(lambda: len(caught()) >= len(sent_ids), 90, f"{len(sent_ids)} emails at the SMTP server",
               lambda: sink_log.read_text(errors="replace")[-3000:])
    wait_until(lambda: sink_caught_up(stage), 30, "the email sink at the end of its topic")
    before = len(caught())
    assert before == len(sent_ids), "one email per email delivery"
    requests_before = len(emails())
    decisions_before = len(stage.out.decisions)

    result = herald(stage, "--from", str(started), "--until", str(now_ms()), "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"replayed 0 records from {events_topic} to {events_topic}; left out {len(events)} already decided" \
        in result.stderr, result.stderr  # only this test's: the other tests' events come later
    time.sleep(4)  # two batch windows and several ticks: anything the replay set off would be out now
    assert [d for d in stage.out.decisions[decisions_before:] if d["user_id"] in users] == []
    assert len(emails()) == requests_before and len(caught()) == before, "the mail server received nothing new"

    # a backfill: an archive of the hour holding three events the pipeline never saw
    archive = f"{stage.unique}.archive.events"
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    admin.create_topics([NewTopic(archive, num_partitions=s.partitions, replication_factor=1)])[archive].result(30)
    lost = [ev(u, "lost", occurred_at=now_ms() - 30 * 60_000, priority="HIGH", batchable=False) for u in users]
    for e in events + lost:
        stage.producer.produce(archive, key=e["user_id"].encode(), timestamp=e["occurred_at"],
                               value=stage.codec.encode(f"{events_topic}-value", "NotificationEvent", e))
    assert stage.producer.flush(10) == 0
    result = herald(stage, archive, "--from", str(started), "--until", str(now_ms()), "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"replayed 3 records from {archive} to {events_topic}; left out {len(events)} already decided" \
        in result.stderr, result.stderr
    for e in lost:
        wait_until(lambda e=e: stage.out.of(e["user_id"], e["event_id"], final=True), 60,
                   f"a decision on the backfilled {e['event_id']}", lambda: stage.out.dump(*users))
    wait_until(lambda: len(caught()) >= before + len(lost), 60, "the backfilled events' emails",
               lambda: sink_log.read_text(errors="replace")[-3000:])
    time.sleep(4)
    wait_until(lambda: sink_caught_up(stage), 30, "the email sink at the end of its topic again")
    new = emails()[requests_before:]
    assert sorted(r["event_ids"] for r in new) == sorted([e["event_id"]] for e in lost), stage.out.dump(*users)
    assert len(caught()) == before + len(lost), "one email per backfilled event, none for the hour's others"


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

    result = herald(stage, "--from", str(started), "--until", str(now_ms()), "--include-decided")
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
