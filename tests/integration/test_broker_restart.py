"""The worker rides out a broker restart: it keeps running, and the events produced once the broker is back
are all decided. On a broker of the test's own (the session's broker serves every other test)."""
from __future__ import annotations

import time

import pytest

from infra import kafka
from infra.common import home
from tests.conftest import free_port
from tests.integration.test_policy_pipeline import Stage, ev, new_pipeline, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(stack, tmp_path, monkeypatch):
    """A Kafka of this test's own on free ports, its jars shared with the session's (no second download)."""
    cache = home() / "cache"
    own = tmp_path / "home"
    own.mkdir()
    (own / "cache").symlink_to(cache)
    monkeypatch.setenv("HERALD_HOME", str(own))
    monkeypatch.setenv("HERALD_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("HERALD_KAFKA_CONTROLLER_PORT", str(free_port()))
    kafka.start(progress=lambda line: None)
    yield kafka
    kafka.stop()


def test_the_worker_rides_out_a_broker_restart(own_broker, tmp_path_factory):
    p = new_pipeline(tmp_path_factory, "brk")
    try:
        p.start("worker")
        pid = p.procs["worker"].pid
        stage = Stage(p)
        user = f"{stage.unique}-u"
        before = [ev(user, f"before{i}", channels=["INAPP"]) for i in range(5)]
        stage.send(*before)
        wait_for(lambda: len(stage.out.finals(user)) >= 5, 60, "the decisions before the restart", stage.out, user)

        own_broker.stop()
        time.sleep(8)  # the worker's fetches, commits and ticks fail meanwhile
        assert p.procs["worker"].poll() is None, "the worker is still running while the broker is away"
        own_broker.start(progress=lambda line: None)

        after = [ev(user, f"after{i}", channels=["INAPP"]) for i in range(5)]
        stage.send(*after)
        wanted = {e["event_id"] for e in before + after}
        wait_for(lambda: wanted <= set(stage.out.finals(user)), 120, "every event decided after the restart",
                 stage.out, user)
        assert p.procs["worker"].poll() is None and p.procs["worker"].pid == pid, "the same worker, never restarted"
        stage.close()
    finally:
        p.stop()


async def test_the_in_app_sink_rides_out_a_broker_restart(own_broker, unique, tmp_path):
    """The sink keeps running while its broker is away; what is produced once it is back is delivered once."""
    import asyncpg

    from infra import postgres
    from tests.integration.test_delivery_inapp import start_sink, stop
    from tests.sinks.helpers import Kafka, by_id, request, settings_for
    from tests.sinks.helpers import wait_for as wait_async

    settings = settings_for(unique)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    before = [request(user, "INAPP") for _ in range(3)]
    kafka.send("INAPP", before)
    proc, log = start_sink(unique, tmp_path)
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=2)
    try:
        await wait_async(lambda: len(by_id(kafka.statuses())) == 3, 60)
        own_broker.stop()
        time.sleep(8)
        assert proc.poll() is None, f"the sink exited while the broker was away:\n{log.read_text()[-2000:]}"
        own_broker.start(progress=lambda line: None)
        after = [request(user, "INAPP") for _ in range(3)]
        kafka.send("INAPP", after)
        wanted = {r["delivery_id"] for r in before + after}
        statuses = await wait_async(lambda: (s := by_id(kafka.statuses())) and wanted <= set(s) and s, 120)
        assert all("SENT" in statuses[i] and "DEAD" not in statuses[i] for i in wanted)
        rows = await pool.fetch("SELECT notification_id FROM notifications WHERE user_id = $1", user)
        assert sorted(r["notification_id"] for r in rows) == sorted(wanted), "each delivered once"
        assert proc.poll() is None
    finally:
        stop(proc)
        await pool.execute("DELETE FROM notifications WHERE user_id = $1", user)
        await pool.close()
