"""The in-app sink: each delivery becomes a row in PostgreSQL's ``notifications``, once.

The row's primary key is the ``delivery_id``, so a redelivered request (a retry, a restart, a replay)
inserts nothing and is reported SUPPRESSED rather than shown twice.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import asyncpg

from sinks.runner import Outcome, SinkRunner
from herald.settings import Settings

INSERT = """
INSERT INTO notifications (notification_id, user_id, type, priority, kind, title, body, data, event_ids, created_at)
SELECT r.notification_id, r.user_id, r.type, r.priority, r.kind, r.title, r.body, r.data, r.event_ids::text[],
       r.created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::jsonb[], $9::text[], $10::timestamptz[])
    AS r(notification_id, user_id, type, priority, kind, title, body, data, event_ids, created_at)
ON CONFLICT (notification_id) DO NOTHING
RETURNING notification_id
"""


def _ts(value) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value / 1000, tz=timezone.utc)


class InAppDeliverer:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, requests: list[dict]) -> list[Outcome]:
        unique = {r["delivery_id"]: r for r in requests}
        rows = list(unique.values())
        async with self.pool.acquire() as conn:
            inserted = {r["notification_id"] for r in await conn.fetch(
                INSERT,
                [r["delivery_id"] for r in rows], [r["user_id"] for r in rows], [r["type"] for r in rows],
                [r["priority"] for r in rows], [r["kind"] for r in rows], [r["title"] for r in rows],
                [r["body"] for r in rows], [json.dumps(r.get("data") or {}) for r in rows],
                # a text[] column from unnest of text[] needs the array literal form
                ["{" + ",".join(json.dumps(e) for e in r["event_ids"]) + "}" for r in rows],
                [_ts(r["created_at"]) for r in rows])}
        return [Outcome(r["delivery_id"], "SENT", "postgres") if r["delivery_id"] in inserted else
                Outcome(r["delivery_id"], "SUPPRESSED", "postgres", error="duplicate delivery_id: already delivered")
                for r in requests]


async def run(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        await SinkRunner(settings, "INAPP", InAppDeliverer(pool)).run()
    finally:
        await pool.close()
