"""The store's read, seen and archive times: now by default, or the time given (a rebuild replaying when
the user acted), and the first time kept when an action comes again."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from api import store
from sinks.inapp import InAppDeliverer
from tests.api.test_unread_counts import request

pytestmark = pytest.mark.integration

TIMES = "SELECT read_at, seen_at, archived_at FROM notifications WHERE notification_id = $1"


async def test_an_action_s_time_is_the_one_given_and_the_first_one_stays(pool, unique):
    users = [f"{unique}-u{i}" for i in range(3)]
    try:
        await InAppDeliverer(pool)([request(u) for u in users for _ in range(3)])
        ids = {u: [r["notification_id"] for r in await pool.fetch(
            "SELECT notification_id FROM notifications WHERE user_id = $1 ORDER BY notification_id", u)] for u in users}
        t1 = datetime(2026, 11, 30, 9, 15, 0, 123000, tzinfo=timezone.utc)
        t2, t3 = t1 + timedelta(minutes=5), t1 + timedelta(hours=1)
        u0 = ids[users[0]]
        assert await store.mark_seen(pool, users[0], u0[0], at=t1)
        assert await store.mark_read(pool, users[0], u0[0], at=t2)  # seen before: its seen time stays
        assert await store.mark_read(pool, users[0], u0[0], at=t3)  # read again: the first read time stays
        assert await store.mark_read(pool, users[0], u0[1], at=t2)  # never seen: seen when read
        assert await store.archive(pool, users[0], u0[2], at=t1)
        assert await store.archive(pool, users[0], u0[2], at=t3)
        assert tuple(await pool.fetchrow(TIMES, u0[0])) == (t2, t1, None)
        assert tuple(await pool.fetchrow(TIMES, u0[1])) == (t2, t2, None)
        assert tuple(await pool.fetchrow(TIMES, u0[2])) == (None, None, t1)

        u1 = ids[users[1]]
        assert await store.mark_seen(pool, users[1], u1[0], at=t1)
        assert await store.archive(pool, users[1], u1[2], at=t1)
        assert await store.mark_all_read(pool, users[1], at=t3) == 2  # the archived one is left out
        assert [tuple(await pool.fetchrow(TIMES, n)) for n in u1] == [(t3, t1, None), (t3, t3, None), (None, None, t1)]

        before = await pool.fetchval("SELECT now()")  # no time given: the database's now
        u2 = ids[users[2]]
        assert await store.mark_read(pool, users[2], u2[0]) and await store.archive(pool, users[2], u2[1])
        assert await store.mark_all_read(pool, users[2]) == 1
        for n in u2:
            assert all(t is None or t >= before for t in await pool.fetchrow(TIMES, n))
        read_at, seen_at, _ = await pool.fetchrow(TIMES, u2[2])
        assert read_at is not None and seen_at is not None
    finally:
        await pool.execute("DELETE FROM notifications WHERE user_id LIKE $1", f"{unique}-%")
        await pool.execute("DELETE FROM unread_counts WHERE user_id LIKE $1", f"{unique}-%")
