"""Kill -9 a worker or a sink mid-stream: every event published before the kill reaches PostgreSQL exactly once."""
from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import make_event, standard_producer, wait_for_rows

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("victim", ["worker", "sink"])
def test_kill_9_mid_stream_loses_nothing_and_duplicates_nothing(stack, tmp_path, victim):
    unique = f"kill{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path, free_port()).prepare()
    try:
        p.start("worker")
        p.start("sink")
        settings = p.settings
        users = [f"{unique}-u{i}" for i in range(20)]
        send, producer = standard_producer(settings.kafka_bootstrap, settings.schema_registry_url, settings.topic("events"))
        events = [make_event(users[n % len(users)], n) for n in range(1500)]
        for e in events[:750]:
            send(e)
        producer.flush(10)
        # let it get some way through, then kill it while the rest arrives
        wait_for_rows(settings.database_url, users, 1, timeout=60)
        p.kill(victim)
        for e in events[750:]:
            send(e)
        producer.flush(10)
        time.sleep(1)
        p.start(victim)
        rows = wait_for_rows(settings.database_url, users, len(events), timeout=120)
        delivered = [r["event_ids"][0] for r in rows]
        assert len(delivered) == len(events), "lost or duplicated notifications"
        assert sorted(delivered) == sorted(e["event_id"] for e in events)
    finally:
        p.stop()
