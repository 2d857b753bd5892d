"""The in-app sink: each delivery becomes a row in PostgreSQL's ``notifications``, once.

The row's primary key is the ``delivery_id``, so a redelivered request (a retry, a restart, a replay)
inserts nothing and is reported SUPPRESSED rather than shown twice: the table is this channel's ledger, and
the insert is its send, in one transaction.

``event_ids`` travel as one JSON array per row and become ``text[]`` inside PostgreSQL, so any id (non-ASCII,
quotes, commas, braces) arrives exactly as written. A value PostgreSQL cannot store (a NUL character) makes
the statement fail; the runtime (``sinks/runner.py``) then delivers the batch one request at a time and the
request still refused is DEAD, with the database's reason, while the others are delivered.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import asyncpg
import orjson

from herald.settings import Settings
from sinks.runner import Outcome

INSERT = """
INSERT INTO notifications (notification_id, user_id, type, priority, kind, title, body, data, event_ids, created_at)
SELECT r.notification_id, r.user_id, r.type, r.priority, r.kind, r.title, r.body, r.data,
       ARRAY(SELECT jsonb_array_elements_text(r.event_ids)), r.created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::jsonb[], $9::jsonb[], $10::timestamptz[])
    AS r(notification_id, user_id, type, priority, kind, title, body, data, event_ids, created_at)
ON CONFLICT (notification_id) DO NOTHING
RETURNING notification_id
"""


def _ts(value) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value / 1000, tz=timezone.utc)


def _json(value) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer wider than 64 bits, which orjson refuses and JSON allows
        return json.dumps(value, default=str)


class InAppDeliverer:
    """Inserts a batch of requests; raises what PostgreSQL raises (the runtime sorts it out)."""

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
                [r["body"] for r in rows], [_json(r.get("data") or {}) for r in rows],
                [_json(list(r["event_ids"])) for r in rows], [_ts(r["created_at"]) for r in rows])}
        seen: set[str] = set()
        out = []
        for r in requests:
            d = r["delivery_id"]
            if d in inserted and d not in seen:
                out.append(Outcome(d, "SENT", "postgres"))
            else:
                out.append(Outcome(d, "SUPPRESSED", "postgres", error="duplicate delivery_id: already delivered"))
            seen.add(d)
        return out


async def run(settings: Settings | None = None) -> None:
    from sinks import runtime

    await runtime.run(settings or Settings.from_env(), "INAPP")
