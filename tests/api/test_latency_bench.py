"""bench/api_latency end to end at a small scale: it seeds, loads a real `herald api`, checks answers, cleans up.

Figures are not asserted (benchmarks print them); only that the run is sound."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bench import api_latency
from infra import postgres

pytestmark = pytest.mark.integration


def test_a_small_run_answers_every_request_correctly_and_leaves_no_rows(stack):
    postgres.migrate()
    lines: list[str] = []
    figures = api_latency.run(rate=300, duration=2, warmup=1, users=60, max_per_user=30, clients=2, connections=4,
                              sample=1, progress=lines.append)
    assert figures["requests_due"] == 600 and figures["errors"] == 0, figures
    assert figures["answered"] == figures["ok"] == 600
    assert figures["answers_checked"] > 0 and figures["answers_wrong"] == 0
    assert figures["unread_p50_ms"] <= figures["unread_p99_ms"] <= figures["unread_max_ms"]
    prefix = next(line.split()[-2] for line in lines if line.startswith("seeding"))

    async def left() -> int:
        conn = await asyncpg.connect(postgres.database_url())
        try:
            return (await conn.fetchval("SELECT count(*) FROM notifications WHERE user_id LIKE $1", f"{prefix}-%")
                    + await conn.fetchval("SELECT count(*) FROM unread_counts WHERE user_id LIKE $1", f"{prefix}-%"))
        finally:
            await conn.close()

    assert asyncio.run(left()) == 0


def test_seeded_counts_are_what_a_recount_finds():
    import random
    from datetime import datetime, timezone

    rng, now = random.Random(3), datetime.now(timezone.utc)
    for n in (0, 1, 50, 200):
        rows, unread, unseen = api_latency._user_rows(rng, "p", "p-u1", n, now)
        live = [r for r in rows if r[13] is None]  # archived_at
        assert len(rows) == n
        assert unread == sum(r[11] is None for r in live) and unseen == sum(r[12] is None for r in live)
        assert all(r[12] is not None for r in rows if r[11] is not None)  # read implies seen
