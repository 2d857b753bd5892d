"""The in-app sink against the real broker and database, run as `herald sink inapp` is in production.

Issue #11, fault 1: one request PostgreSQL refuses (a NUL in its title) made the sink exit without
committing, and die again on the same batch after every restart. Now that request is DEAD with a dead letter
and the others are delivered; fault 7: non-ASCII event ids arrive intact and the record size limit is
HERALD_MAX_EVENT_BYTES, not the codec's default.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest

from infra import postgres
from infra.common import REPO_ROOT
from tests.sinks.helpers import Kafka, TcpProxy, by_id, request, running, settings_for, wait_for

pytestmark = pytest.mark.integration


def start_sink(unique: str, tmp_path, **env) -> tuple[subprocess.Popen, object]:
    log = tmp_path / f"sink-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "inapp"], cwd=REPO_ROOT,
                            env={**os.environ, "HERALD_TOPIC_PREFIX": f"{unique}.", "HERALD_APP_ID": f"{unique}-app",
                                 "HERALD_PARTITIONS": "2", "PYTHONUNBUFFERED": "1", **env},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while "consuming" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc, log


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(30)


async def test_a_refused_request_is_dead_lettered_and_the_sink_goes_on(pool, unique, tmp_path):
    settings = settings_for(unique)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    good = [request(user, "INAPP") for _ in range(3)]
    odd_ids = ["évènement-1", 'ид,{x}"y\\z', "日本"]
    good.append(request(user, "INAPP", event_ids=odd_ids))
    bad = request(user, "INAPP", title="bad\x00title")
    kafka.send("INAPP", good[:2] + [bad] + good[2:])
    proc, log = start_sink(unique, tmp_path)
    try:
        statuses = await wait_for(lambda: (s := by_id(kafka.statuses())) and len(s) == 5 and s, 60)
        assert all(statuses[r["delivery_id"]] == ["SENT"] for r in good)
        assert statuses[bad["delivery_id"]] == ["FAILED", "DEAD"]
        letters = kafka.dead_letters()
        assert len(letters) == 1
        h = letters[0]["headers"]
        assert h["herald.error.reason"] == "REJECTED" and h["herald.error.stage"] == "sink-inapp"
        assert h["herald.source.topic"] == settings.topic("delivery.inapp") and letters[0]["key"] == user.encode()
        rows = await pool.fetch("SELECT notification_id, event_ids FROM notifications WHERE user_id = $1", user)
        assert {r["notification_id"] for r in rows} == {r["delivery_id"] for r in good}
        assert {r["notification_id"]: r["event_ids"] for r in rows}[good[-1]["delivery_id"]] == odd_ids
        # alive, and after a restart nothing of the committed batch comes again
        later = request(user, "INAPP")
        kafka.send("INAPP", [later])
        await wait_for(lambda: later["delivery_id"] in by_id(kafka.statuses()), 30)
        assert proc.poll() is None
        stop(proc)
        proc, log = start_sink(unique, tmp_path)
        time.sleep(3)
        assert len(kafka.statuses()) == 7 and len(kafka.dead_letters()) == 1
    finally:
        stop(proc)
        await pool.execute("DELETE FROM notifications WHERE user_id = $1", user)


async def test_the_record_limit_is_herald_max_event_bytes(pool, unique, tmp_path):
    settings = settings_for(unique)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    big = request(user, "INAPP", body="x" * 300_000)  # over the codec's default of 256 KiB
    small = request(user, "INAPP", body="y" * 100)
    kafka.send("INAPP", [big, small])
    proc, _ = start_sink(unique, tmp_path, HERALD_MAX_EVENT_BYTES="400000")
    try:
        await wait_for(lambda: len(kafka.statuses()) == 2, 60)
        assert by_id(kafka.statuses()) == {big["delivery_id"]: ["SENT"], small["delivery_id"]: ["SENT"]}
    finally:
        stop(proc)
    settings2 = settings_for(unique + "b")
    kafka2 = Kafka(settings2)
    kafka2.send("INAPP", [request(user + "b", "INAPP", body="z" * 5000), request(user + "b", "INAPP")])
    proc, _ = start_sink(unique + "b", tmp_path, HERALD_MAX_EVENT_BYTES="2000")
    try:
        await wait_for(lambda: len(kafka2.statuses()) == 1 and len(kafka2.dead_letters()) == 1, 60)
        assert kafka2.dead_letters()[0]["headers"]["herald.error.reason"] == "TOO_LARGE"
    finally:
        stop(proc)
        await pool.execute("DELETE FROM notifications WHERE user_id LIKE $1", f"{user}%")


async def test_the_database_away_holds_the_batch_until_it_is_back(pool, unique):
    """PostgreSQL unreachable (through a proxy this test closes): nothing is committed or lost; once it
    answers again every request is delivered once."""
    from sinks import runtime

    proxy = TcpProxy("127.0.0.1", int(postgres.database_url().rsplit(":", 1)[1].split("/")[0]))
    await proxy.up()
    dsn = postgres.database_url().replace(f":{proxy.target[1]}/", f":{proxy.port}/")
    settings = settings_for(unique, database_url=dsn)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    sink_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    runner = runtime.build(settings, "INAPP", sink_pool)
    try:
        async with running(runner):
            first = [request(user, "INAPP") for _ in range(3)]
            kafka.send("INAPP", first)
            await wait_for(lambda: len(kafka.statuses()) == 3, 30)
            await proxy.down()
            held = [request(user, "INAPP") for _ in range(4)]
            kafka.send("INAPP", held)
            import asyncio
            await asyncio.sleep(4)
            assert len(kafka.statuses()) == 3  # held, not failed
            await proxy.up()
            await wait_for(lambda: len(kafka.statuses()) == 7, 60)
            assert {d: v for d, v in by_id(kafka.statuses()).items() if v != ["SENT"]} == {}
        rows = await pool.fetch("SELECT notification_id FROM notifications WHERE user_id = $1", user)
        assert sorted(r["notification_id"] for r in rows) == sorted(r["delivery_id"] for r in first + held)
    finally:
        await proxy.down()
        sink_pool.terminate()
        await pool.execute("DELETE FROM notifications WHERE user_id = $1", user)


async def test_a_sink_whose_broker_is_away_keeps_polling_instead_of_exiting(pool, unique):
    """The shared broker cannot be restarted here; a bootstrap address nothing listens on is a broker away
    for the whole run: the sink must stay up (it would resume when the broker answers) and stop cleanly."""
    import asyncio

    from sinks import runtime
    from tests.sinks.helpers import free_port

    settings = settings_for(unique)
    away = settings.__class__(**{**settings.__dict__, "kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    runner = runtime.build(away, "INAPP", pool)
    task = asyncio.ensure_future(runner.run())
    await asyncio.sleep(8)
    assert not task.done(), task.exception() if task.done() else None
    runner.stop()
    await asyncio.wait_for(task, 30)


async def test_a_sink_serves_its_outcomes_as_metrics(pool, unique, tmp_path):
    import urllib.request

    from herald.metrics import served_ports

    settings = settings_for(unique)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    kafka.send("INAPP", [request(user, "INAPP") for _ in range(3)])
    proc, log = start_sink(unique, tmp_path)
    try:
        await wait_for(lambda: len(kafka.statuses()) == 3, 60)
        entry = [e for e in served_ports() if e["pid"] == proc.pid]
        assert entry and entry[0]["process"] == "sink-inapp", log.read_text()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{entry[0]['port']}/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines() if x.startswith('herald_sink_outcomes_total{channel="INAPP",status="SENT"}'))
        assert float(line.rsplit(" ", 1)[1]) == 3
        assert user not in text, "no user id in any label"
    finally:
        stop(proc)
        await pool.execute("DELETE FROM notifications WHERE user_id = $1", user)
