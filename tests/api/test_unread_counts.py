"""The unread counters of migration 002 stay equal to a recount of ``notifications`` whatever writes it:
the in-app sink (redeliveries included), the API's reads, archiving, deletes, and writers racing."""
from __future__ import annotations

import asyncio
import random
import time
import uuid

import asyncpg
import pytest

from api import store
from infra import postgres
from sinks.inapp import InAppDeliverer

pytestmark = pytest.mark.integration

RECOUNT = """
SELECT user_id, count(*) FILTER (WHERE read_at IS NULL) AS unread, count(*) FILTER (WHERE seen_at IS NULL) AS unseen
FROM notifications WHERE user_id LIKE $1 AND archived_at IS NULL GROUP BY user_id
"""


@pytest.fixture
async def users(pool, unique):
    yield [f"{unique}-u{i}" for i in range(6)]
    await pool.execute("DELETE FROM notifications WHERE user_id LIKE $1", f"{unique}-%")
    await pool.execute("DELETE FROM unread_counts WHERE user_id LIKE $1", f"{unique}-%")


def request(user: str, delivery_id: str | None = None) -> dict:
    return {"delivery_id": delivery_id or f"{user}-{uuid.uuid4().hex}", "user_id": user, "type": "COMMENT",
            "priority": "NORMAL", "kind": "SINGLE", "title": "t", "body": "b", "data": {"k": 1},
            "event_ids": [uuid.uuid4().hex], "created_at": int(time.time() * 1000)}


async def assert_counts_equal_a_recount(pool: asyncpg.Pool, prefix: str) -> None:
    recount = {r["user_id"]: (r["unread"], r["unseen"]) for r in await pool.fetch(RECOUNT, f"{prefix}-%")}
    counters = {r["user_id"]: (r["unread"], r["unseen"]) for r in await pool.fetch(
        "SELECT user_id, unread, unseen FROM unread_counts WHERE user_id LIKE $1", f"{prefix}-%")}
    assert {u: c for u, c in counters.items() if c != (0, 0)} == {u: c for u, c in recount.items() if c != (0, 0)}
    for user, (unread, unseen) in recount.items():
        assert await store.unread_count(pool, user) == {"user_id": user, "unread": unread, "unseen": unseen}


async def test_the_sink_counts_each_delivery_once(pool, users, unique):
    deliver = InAppDeliverer(pool)
    batch = [request(users[i % 3]) for i in range(10)]
    await deliver(batch)
    await deliver(batch[:4] + [request(users[0])])  # a redelivery inserts nothing and counts nothing
    assert await store.unread_count(pool, users[0]) == {"user_id": users[0], "unread": 5, "unseen": 5}
    assert await store.unread_count(pool, users[5]) == {"user_id": users[5], "unread": 0, "unseen": 0}
    await assert_counts_equal_a_recount(pool, unique)


async def test_reads_archives_deletes_and_direct_sql_keep_the_counts(pool, users, unique):
    deliver = InAppDeliverer(pool)
    await deliver([request(u) for u in users for _ in range(4)])
    ids = {u: [r["notification_id"] for r in await pool.fetch(
        "SELECT notification_id FROM notifications WHERE user_id = $1 ORDER BY notification_id", u)] for u in users}
    assert await store.mark_read(pool, users[0], ids[users[0]][0])
    assert await store.mark_read(pool, users[0], ids[users[0]][0])  # twice: counted once
    assert await store.mark_all_read(pool, users[1]) == 4
    await pool.execute("UPDATE notifications SET seen_at = now() WHERE user_id = $1", users[2])
    await pool.execute("UPDATE notifications SET archived_at = now() WHERE notification_id = $1", ids[users[3]][0])
    await pool.execute("UPDATE notifications SET read_at = NULL, seen_at = NULL WHERE user_id = $1", users[1])
    await pool.execute("DELETE FROM notifications WHERE notification_id = ANY($1)", ids[users[4]][:2])
    await pool.execute("UPDATE notifications SET user_id = $2 WHERE notification_id = $1", ids[users[5]][0], users[0])
    await pool.execute(  # a row inserted already read and seen counts nowhere
        "INSERT INTO notifications (notification_id, user_id, type, priority, kind, title, body, event_ids, created_at,"
        " read_at, seen_at) VALUES ($1, $2, 'COMMENT', 'LOW', 'SINGLE', 't', 'b', '{}', now(), now(), now())",
        f"{unique}-read", users[5])
    assert (await store.unread_count(pool, users[0]))["unread"] == 4  # 4 - 1 read + 1 moved in
    assert await store.unread_count(pool, users[2]) == {"user_id": users[2], "unread": 4, "unseen": 0}
    await assert_counts_equal_a_recount(pool, unique)


async def test_racing_writers_leave_the_counts_equal_to_a_recount(pool, users, unique):
    """Sink batches, reads and read-alls on overlapping users at once: no deadlock, no lost update."""
    deliver = InAppDeliverer(pool)
    rng = random.Random(5)

    async def sink_batches() -> None:
        for _ in range(15):
            await deliver([request(rng.choice(users)) for _ in range(rng.randint(1, 20))])

    async def readers() -> None:
        for _ in range(30):
            user = rng.choice(users)
            if rng.random() < 0.2:
                await store.mark_all_read(pool, user)
            else:
                row = await pool.fetchrow("SELECT notification_id FROM notifications WHERE user_id = $1 "
                                          "AND read_at IS NULL LIMIT 1", user)
                if row:
                    await store.mark_read(pool, user, row["notification_id"])

    await asyncio.wait_for(asyncio.gather(*[sink_batches() for _ in range(3)], *[readers() for _ in range(3)]), 120)
    await assert_counts_equal_a_recount(pool, unique)


async def test_the_migration_recounts_when_run_again_and_truncate_clears(pool, unique):
    """In a schema of its own (a TRUNCATE of the shared table would wipe other tests' rows)."""
    schema = f"{unique}_schema"
    async with pool.acquire() as conn:
        try:
            await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
            await conn.execute((postgres.MIGRATIONS / "001_inapp.sql").read_text())
            await conn.execute((postgres.MIGRATIONS / "002_unread_counts.sql").read_text())
            await conn.execute(
                "INSERT INTO notifications (notification_id, user_id, type, priority, kind, title, body, event_ids,"
                " created_at) SELECT 'n' || i, 'u' || (i % 3), 'T', 'LOW', 'SINGLE', 't', 'b', '{}', now()"
                " FROM generate_series(1, 30) i")
            await conn.execute("UPDATE unread_counts SET unread = 99")  # drifted, say by a hand edit
            await conn.execute((postgres.MIGRATIONS / "002_unread_counts.sql").read_text())  # idempotent: recounts
            assert {r["user_id"]: r["unread"] for r in await conn.fetch("SELECT * FROM unread_counts")} == {
                "u0": 10, "u1": 10, "u2": 10}
            await conn.execute("TRUNCATE notifications")
            assert await conn.fetchval("SELECT count(*) FROM unread_counts") == 0
        finally:
            await conn.execute(f"RESET search_path; DROP SCHEMA {schema} CASCADE")


async def test_concurrent_lookups_share_queries_and_get_their_own_answers(pool, users, unique):
    deliver = InAppDeliverer(pool)
    await deliver([request(u) for i, u in enumerate(users) for _ in range(i)])
    class Counting:
        queries = 0

        async def fetchrow(self, *args):
            Counting.queries += 1
            return await pool.fetchrow(*args)

        async def fetch(self, *args):
            Counting.queries += 1
            return await pool.fetch(*args)

    counts = store.UnreadCounts(Counting(), concurrency=2)  # type: ignore[arg-type]
    asked = [users[i % len(users)] for i in range(300)] + [f"{unique}-nobody"]
    answers = await asyncio.gather(*[counts.get(u) for u in asked])
    assert answers == [await store.unread_count(pool, u) for u in asked]
    assert Counting.queries <= 4  # two alone, then the rest together
    assert answers[1] == {"user_id": users[1], "unread": 1, "unseen": 1}
    assert counts.running == 0 and not counts.waiting


async def test_a_failed_shared_query_fails_each_of_its_requests(pool, users):
    class Broken:
        async def fetchrow(self, *args):
            await asyncio.sleep(0.01)
            raise asyncpg.PostgresConnectionError("gone")

        async def fetch(self, *args):
            raise asyncpg.PostgresConnectionError("gone")

    counts = store.UnreadCounts(Broken(), concurrency=1)  # type: ignore[arg-type]
    results = await asyncio.gather(*[counts.get(u) for u in users], return_exceptions=True)
    assert all(isinstance(r, asyncpg.PostgresConnectionError) for r in results)
    assert counts.running == 0 and not counts.waiting
