"""``herald rebuild inbox`` after a real database loss.

The worker, the in-app sink and the API run against a database of this test's own on the shared server.
Notifications are delivered, and marked read, seen, archived and read-all through the API (which writes
herald.reads); one arrives after the read-all, so it stays unread. The rows and the unread/unseen counts
are recorded, the database is dropped and created again empty, and the rebuild must bring back the same
rows (ids, contents, read/seen/archived) and the same counts, with the read, seen and archive times of the
user's actions as ``herald.reads`` holds them. Run again it refuses the non-empty inbox; with --force it
empties it and rebuilds the same again.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta

import asyncpg
import pytest

from api.auth import mint, signing_secret
from infra import postgres
from infra.common import REPO_ROOT
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_policy_pipeline import Stage, ev
from tests.integration.test_replay import records, wait_until

pytestmark = pytest.mark.integration

ROWS = """SELECT notification_id, user_id, type, priority, kind, title, body, data::text, event_ids, created_at,
                 read_at IS NOT NULL AS read, seen_at IS NOT NULL AS seen, archived_at IS NOT NULL AS archived
          FROM notifications ORDER BY notification_id"""
TIMES = "SELECT notification_id, read_at, seen_at, archived_at FROM notifications ORDER BY notification_id"


async def _admin(sql: str) -> None:
    conn = await postgres._connect(postgres.parse_url(postgres.database_url()), admin=True)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_database(name: str) -> str:
    """Drop ``name`` if it exists (its connections too) and create it empty, owned by the URL's role."""
    owner = postgres.parse_url(postgres.database_url()).user
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}" OWNER "{owner}"'))
    url = postgres.parse_url(postgres.database_url())
    return f"postgresql://{url.user}:{url.password}@{url.host}:{url.port}/{name}"


async def _fetch(url: str, sql: str) -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def fetch(url: str, sql: str) -> list[tuple]:
    return asyncio.run(_fetch(url, sql))


def api(stage: Stage, user: str, path: str, method: str = "POST") -> dict:
    token = mint(signing_secret(stage.settings), user)
    req = urllib.request.Request(f"http://127.0.0.1:{stage.settings.api_port}/v1/users/{user}{path}", method=method,
                                 headers={"Authorization": f"Bearer {token}"}, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def rebuild(stage: Stage, url: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "inbox", *argv], cwd=REPO_ROOT,
                          env={**stage.p.env, "HERALD_DATABASE_URL": url}, capture_output=True, text=True, timeout=180)


@pytest.fixture
def setup(stack, tmp_path):
    unique = f"rb{uuid.uuid4().hex[:8]}"
    database = f"herald_{unique}"
    url = fresh_database(database)
    postgres.migrate(url)
    pipeline = Pipeline(unique, tmp_path, free_port()).prepare()
    pipeline.env["HERALD_DATABASE_URL"] = url
    pipeline.env["HERALD_SINK_METRICS_PORT"] = "-1"
    for name in ("worker", "sink", "api"):
        pipeline.start(name)
    stage = Stage(pipeline)
    yield stage, url, database
    stage.close()
    pipeline.stop()
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def test_the_inbox_and_its_counts_come_back_from_kafka_after_the_database_is_lost(setup):
    stage, url, database = setup
    users = [f"{stage.unique}-u{i}" for i in range(3)]
    first = [ev(u, f"n{j}", priority="HIGH", batchable=False) for u in users for j in range(4)]
    stage.send(*first)
    count = "SELECT count(*) FROM notifications"
    wait_until(lambda: fetch(url, count)[0][0] == 12, 60, "12 in-app notifications", lambda: stage.out.dump(*users))
    ids = {u: [r[0] for r in fetch(url, f"SELECT notification_id FROM notifications WHERE user_id = '{u}' "
                                        "ORDER BY notification_id")] for u in users}
    api(stage, users[0], f"/notifications/{ids[users[0]][0]}/read")
    api(stage, users[0], f"/notifications/{ids[users[0]][1]}/seen")
    api(stage, users[0], f"/notifications/{ids[users[0]][2]}/archive")
    api(stage, users[1], "/notifications/read-all")
    later = ev(users[1], "later", priority="HIGH", batchable=False)  # after the read-all: stays unread
    stage.send(later)
    wait_until(lambda: fetch(url, count)[0][0] == 13, 60, "the later notification")
    assert api(stage, users[1], "/unread-count", "GET") == {"user_id": users[1], "unread": 1, "unseen": 1}
    reads = stage.settings.topic("reads")

    def reads_written() -> int:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": stage.settings.kafka_bootstrap, "group.id": f"w-{uuid.uuid4()}"})
        try:
            return sum(c.get_watermark_offsets(TopicPartition(reads, p), timeout=10)[1]
                       for p in range(stage.settings.partitions))
        finally:
            c.close()

    wait_until(lambda: reads_written() >= 4, 30, "the four reads in herald.reads")
    rows = fetch(url, ROWS)
    times = fetch(url, TIMES)
    counts = fetch(url, "SELECT user_id, unread, unseen FROM unread_counts ORDER BY user_id")
    acted = {(r["action"], r["notification_id"] or r["user_id"]): r["at"]
             for r in (stage.codec.decode(m.value(), "ReadEvent") for m in records(stage, "reads"))}
    owner = {r[0]: r[1] for r in rows}

    def when(nid: str, *actions: str):
        """The time of the first of ``actions`` the user made on ``nid`` (READ_ALL: on its user)."""
        for a in actions:
            at = acted.get((a, owner[nid] if a == "READ_ALL" else nid))
            if at is not None:
                return at
        return None

    # the API stamps the database, then the read record, a moment later: the rebuild takes the record's time
    expected = [(nid, when(nid, "READ", "READ_ALL") if read else None,
                 when(nid, "SEEN", "READ", "READ_ALL") if seen else None,
                 when(nid, "ARCHIVED") if archived else None) for nid, read, seen, archived in times]
    for (nid, *was), (_, *rebuilt) in zip(times, expected):
        assert all((a is None) == (b is None) for a, b in zip(was, rebuilt)), (nid, was, rebuilt)
        assert all(a is None or abs(b - a) < timedelta(seconds=5) for a, b in zip(was, rebuilt)), (nid, was, rebuilt)
    # u0: 4 less the archived one, one read (so seen too) and one seen; u1: the one after the read-all
    assert counts == [(users[0], 2, 1), (users[1], 1, 1), (users[2], 4, 4)]
    assert sum(r[10] for r in rows) == 5 and sum(r[11] for r in rows) == 6 and sum(r[12] for r in rows) == 1

    stage.p.kill("api")
    stage.p.kill("sink")
    fresh_database(database)  # the loss: an empty database, not even the tables

    result = rebuild(stage, url, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "rebuilt 13 notifications; applied reads: 1 ARCHIVED, 1 READ, 1 READ_ALL, 1 SEEN" in result.stderr, \
        result.stderr
    assert fetch(url, ROWS) == rows
    assert fetch(url, TIMES) == expected
    assert fetch(url, "SELECT user_id, unread, unseen FROM unread_counts ORDER BY user_id") == counts

    again = rebuild(stage, url, "--quiet")
    assert again.returncode == 2 and "the inbox already holds 13 notifications; --force" in again.stderr, again.stderr
    forced = rebuild(stage, url, "--quiet", "--force")
    assert forced.returncode == 0 and "emptied 13 notifications; rebuilt 13 notifications" in forced.stderr, \
        forced.stderr
    assert fetch(url, ROWS) == rows
    assert fetch(url, TIMES) == expected
    assert fetch(url, "SELECT user_id, unread, unseen FROM unread_counts ORDER BY user_id") == counts
