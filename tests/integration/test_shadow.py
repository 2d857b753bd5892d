"""``herald replay --shadow`` against a live worker on the real broker and registry.

The live pipeline runs with 2-second batch windows and 6-second digests; the shadow run with
``HERALD_BATCH_WINDOW_S=300`` and ``HERALD_DIGEST_PERIOD_S=86400``. Each of two users gets, within one
5-minute window of the past, three NORMAL batchable events (live: three batches of one; shadow: one batch
of three), a LOW one (live: digested; shadow: still held until the day's end) and a HIGH one (routed
alone on both sides); a third user whose preferences (written before the window) turn the type off is
suppressed on both sides. The report's counts and changed events are checked exactly, and the live delivery
topics get nothing new.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.preferences import defaults
from herald.enums import CHANNELS
from infra.common import REPO_ROOT
from streams.shadow import caught_up
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_policy_pipeline import Stage, ev, now_ms
from tests.integration.test_replay import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stage(stack, tmp_path_factory):
    unique = f"sh{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(unique, tmp_path_factory.mktemp("shadow"), free_port()).prepare()
    pipeline.start("worker")
    s = Stage(pipeline)
    yield s
    s.close()
    pipeline.stop()


def ends(stage: Stage, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": stage.settings.kafka_bootstrap, "group.id": f"ends-{uuid.uuid4()}"})
    try:
        return {(t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                for t in topics for p in range(stage.settings.partitions)}
    finally:
        c.close()


def test_a_longer_batch_window_and_digest_period_change_these_fates_and_deliver_nothing(stage, tmp_path):
    s = stage.settings
    users = [f"{stage.unique}-u{i}" for i in range(2)]
    window = now_ms() // 300_000 * 300_000 - 600_000  # a 5-minute window that ended five minutes ago
    events_topic = s.topic("events")
    made: dict[str, list[dict]] = {}
    for u in users:
        made[u] = [ev(u, f"n{i}", occurred_at=window + 10_000 + i * 20_000) for i in range(3)]
        made[u].append(ev(u, "low", occurred_at=window + 80_000, priority="LOW"))
        made[u].append(ev(u, "high", occurred_at=window + 90_000, priority="HIGH", batchable=False))
        for e in made[u]:
            stage.producer.produce(events_topic, key=u.encode(), timestamp=e["occurred_at"],
                                   value=stage.codec.encode(f"{events_topic}-value", "NotificationEvent", e))
    # a third user turned these events off before the window: suppressed on both sides, which shows that
    # the shadow worker read the live preferences before the events
    quiet = f"{stage.unique}-quiet"
    prefs_topic = s.topic("preferences")
    stage.producer.produce(prefs_topic, key=quiet.encode(), timestamp=window - 60_000, value=stage.codec.encode(
        f"{prefs_topic}-value", "Preferences",
        {**defaults(quiet), "types": {"TASK_DEADLINE": False}, "updated_at": window - 60_000}))
    assert stage.producer.flush(10) == 0
    wait_until(lambda: caught_up(s, s.app_id, [prefs_topic]), 30, "the live worker reading the preferences")
    made[quiet] = [ev(quiet, "off", occurred_at=window + 100_000, priority="HIGH", batchable=False)]
    stage.producer.produce(events_topic, key=quiet.encode(), timestamp=made[quiet][0]["occurred_at"],
                           value=stage.codec.encode(f"{events_topic}-value", "NotificationEvent", made[quiet][0]))
    assert stage.producer.flush(10) == 0
    events = [e for u in made for e in made[u]]
    for e in events:
        wait_until(lambda e=e: stage.out.of(e["user_id"], e["event_id"], final=True), 60,
                   f"a live final decision for {e['event_id']}", lambda: stage.out.dump(*made))
    assert stage.out.of(quiet)[0]["outcome"] == "SUPPRESSED_PREFERENCE"
    time.sleep(2)  # the live batches' and digests' requests are written with their final decisions
    delivery = [s.topic(f"delivery.{c.lower()}") for c in CHANNELS]
    before = ends(stage, delivery)

    out = tmp_path / "reports"
    result = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--shadow",
                             "--set", "HERALD_BATCH_WINDOW_S=300", "--set", "HERALD_DIGEST_PERIOD_S=86400",
                             "--from", str(window), "--until", str(window + 299_999), "--out", str(out)],
                            cwd=REPO_ROOT, env=stage.p.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    assert ends(stage, delivery) == before, "the shadow run wrote nothing to the live delivery topics"
    run_id = result.stderr.split("shadow run ")[1].split(":")[0]
    assert f"report: {out}/shadow-{run_id}.json" in result.stderr
    report = json.loads((out / f"shadow-{run_id}.json").read_text())
    assert report["events"] == 11 and report["unsettled"] == 0 and report["settings"] == {
        "HERALD_BATCH_WINDOW_S": "300", "HERALD_DIGEST_PERIOD_S": "86400"}
    assert report["outcomes"] == {"live": {"BATCHED": 6, "DIGESTED": 2, "ROUTED": 2, "SUPPRESSED_PREFERENCE": 1},
                                  "shadow": {"BATCHED": 6, "ROUTED": 2, "STILL_HELD": 2, "SUPPRESSED_PREFERENCE": 1}}
    # per user: NORMAL offline goes to INAPP at once and to PUSH and EMAIL in batches; LOW to INAPP and the
    # EMAIL digest; HIGH offline to INAPP, PUSH, SMS and EMAIL
    per_user = {"EMAIL": (3 + 1 + 1, 1 + 1), "INAPP": (5, 5), "PUSH": (3 + 1, 1 + 1), "SMS": (1, 1)}
    assert sorted((n["user_id"], n["channel"], n["live"], n["shadow"]) for n in report["notifications"]) == \
        sorted((u, c, live, shade) for u in users for c, (live, shade) in per_user.items())
    assert report["channels"] == {c: {"live": 2 * live, "shadow": 2 * shade} for c, (live, shade) in per_user.items()}
    changed = {(c["event_id"], c["live"], c["shadow"]) for c in report["changed"]}
    assert changed == {(e["event_id"], "BATCHED, alone", "BATCHED, with 2 others") for u in users for e in made[u][:3]} | \
        {(made[u][3]["event_id"], "DIGESTED, alone", "STILL_HELD (DIGESTED)") for u in users}
    rows = list(csv.DictReader(open(out / f"shadow-{run_id}.csv")))
    assert len(rows) == 11 and sum(int(r["changed"]) for r in rows) == 8
    assert {r["event_id"]: r["shadow"] for r in rows}[made[users[0]][4]["event_id"]] == "ROUTED, alone"
    # the run's topics are gone: none under its prefix or app id
    topics = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in topics if run_id in t], sorted(t for t in topics if run_id in t)
    assert "events whose fate changed" in result.stdout and "notifications per user and channel" in result.stdout
