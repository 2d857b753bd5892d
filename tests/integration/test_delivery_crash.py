"""`herald sink email` killed with SIGKILL in the middle of its work and started again: no delivery_id reaches
the mail catcher twice, and every request ends SENT, or DEAD as IN_DOUBT when the kill fell between its
ledger claim and its outcome (the documented in-flight window: at most WAVES_IN_FLIGHT waves of HERALD_SINK_CONCURRENCY requests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from infra import postgres
from infra.common import REPO_ROOT
from sinks.email import message_id
from sinks.runner import WAVES_IN_FLIGHT
from tests.sinks.helpers import Kafka, Server, request, settings_for, wait_for

pytestmark = pytest.mark.integration


def start(unique: str, catcher: Server, log) -> subprocess.Popen:
    env = {**os.environ, "HERALD_TOPIC_PREFIX": f"{unique}.", "HERALD_APP_ID": f"{unique}-app", "HERALD_PARTITIONS": "2",
           "HERALD_SMTP_URL": f"smtp://127.0.0.1:{catcher.port}", "HERALD_SINK_CLAIM_LEASE_S": "3",
           "HERALD_SINK_BATCH_SIZE": "50", "HERALD_SINK_CONCURRENCY": "10", "HERALD_HOME": str(log.parent), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "email"], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while "consuming" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


async def test_a_killed_email_sink_never_sends_a_delivery_twice(stack, unique, tmp_path):
    await postgres.migrate_async()
    catcher = Server("infra.mailcatcher", tmp_path)
    settings = settings_for(unique)
    kafka = Kafka(settings)
    users = [f"{unique}-{i}" for i in range(20)]
    for u in users:
        kafka.contact(u, email=f"{u}@example.test")
    reqs = [request(users[i % len(users)], "EMAIL") for i in range(400)]
    kafka.send("EMAIL", reqs)
    proc = start(unique, catcher, tmp_path / "sink-1.log")
    try:
        # kill in the middle of a batch: some of its mails out, its outcomes not yet written
        await wait_for(lambda: (n := len(catcher.get("/messages"))) > 60 and n % 50 not in (0, 49), 60, 0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sent_before = len(catcher.get("/messages"))
        proc = start(unique, catcher, tmp_path / "sink-2.log")
        ids = {r["delivery_id"] for r in reqs}

        def settled():
            final = {s["delivery_id"]: s for s in kafka.statuses() if s["status"] in ("SENT", "DEAD")}
            return final if set(final) == ids else None

        try:
            final = await wait_for(settled, 120, 1.0)
        except AssertionError:
            import asyncpg
            seen = {s["delivery_id"]: s["status"] for s in kafka.statuses()}
            missing = [d for d in ids if seen.get(d) not in ("SENT", "DEAD")]
            conn = await asyncpg.connect(postgres.database_url())
            rows = await conn.fetch("SELECT delivery_id, status, attempts, claimed_at, now() AS now FROM delivery_ledger "
                                    "WHERE delivery_id = ANY($1::text[])", missing[:5])
            await conn.close()
            raise AssertionError(f"{len(missing)} unsettled: {[(seen.get(d)) for d in missing[:5]]} {rows}")
        counts = Counter(m["message_id"] for m in catcher.get("/messages"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        catcher.stop()
    assert max(counts.values()) == 1, "a delivery reached the catcher twice"
    sent = {d for d, s in final.items() if s["status"] == "SENT"}
    dead = {d: s for d, s in final.items() if s["status"] == "DEAD"}
    assert all((s["error"] or "").startswith("IN_DOUBT") for s in dead.values()), dead
    assert {message_id(d) for d in sent} <= set(counts)
    assert sent_before > 0 and len(dead) <= WAVES_IN_FLIGHT * 10  # the waves in flight at the kill, no more
