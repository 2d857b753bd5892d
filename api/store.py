"""The API's reads and writes of in-app notifications in PostgreSQL."""
from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timezone

import asyncpg

# the counts the triggers of migration 002 keep equal to a recount of `notifications`; no row means none
UNREAD = "SELECT unread, unseen FROM unread_counts WHERE user_id = $1"
UNREAD_MANY = "SELECT user_id, unread, unseen FROM unread_counts WHERE user_id = ANY($1::text[])"

PAGE = """
SELECT notification_id, type, priority, kind, title, body, data, event_ids, created_at, read_at, seen_at
FROM notifications
WHERE user_id = $1 AND archived_at IS NULL AND ($2::boolean IS FALSE OR read_at IS NULL)
  AND ($3::timestamptz IS NULL OR (created_at, notification_id) < ($3, $4))
ORDER BY created_at DESC, notification_id DESC
LIMIT $5
"""


class BadCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, notification_id: str) -> str:
    raw = f"{int(created_at.timestamp() * 1_000_000)}|{notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, notification_id = raw.split("|", 1)
        if "\x00" in notification_id:
            raise ValueError("NUL")
        return datetime.fromtimestamp(int(micros) / 1_000_000, tz=timezone.utc), notification_id
    except Exception:  # noqa: BLE001 - anything malformed is the caller's mistake
        raise BadCursor("cursor is not one this API returned") from None


async def unread_count(pool: asyncpg.Pool, user_id: str) -> dict:
    row = await pool.fetchrow(UNREAD, user_id)
    return {"user_id": user_id, "unread": row[0] if row else 0, "unseen": row[1] if row else 0}


class UnreadCounts:
    """:func:`unread_count` for many concurrent requests with fewer queries.

    Up to ``concurrency`` look-ups run at once, each a query of its own, so under light load nothing
    waits. A request that finds them all busy waits for the next to finish, and every request waiting
    by then goes in one ``user_id = ANY($1)`` query (at most ``max_batch`` users). Each answer is read
    after its request arrived, as a query of its own would be."""

    def __init__(self, pool: asyncpg.Pool, concurrency: int = 2, max_batch: int = 500) -> None:
        self.pool, self.concurrency, self.max_batch = pool, concurrency, max_batch
        self.running = 0
        self.waiting: list[tuple[str, asyncio.Future]] = []

    async def get(self, user_id: str) -> dict:
        if self.running < self.concurrency and not self.waiting:
            self.running += 1
            try:
                return await unread_count(self.pool, user_id)
            finally:
                self.running -= 1
                self._start_batches()
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((user_id, answer))
        self._start_batches()
        return await answer

    def _start_batches(self) -> None:
        while self.waiting and self.running < self.concurrency:
            batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
            self.running += 1
            asyncio.ensure_future(self._batch(batch))

    async def _batch(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        try:
            rows = await self.pool.fetch(UNREAD_MANY, list({user for user, _ in batch}))
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - each waiting request fails as its own query would
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
        else:
            counts = {row[0]: row for row in rows}
            for user, answer in batch:
                row = counts.get(user)
                if not answer.done():
                    answer.set_result({"user_id": user, "unread": row[1] if row else 0, "unseen": row[2] if row else 0})
        finally:
            self.running -= 1
            self._start_batches()


def item(r) -> dict:
    """An inbox item as the API shows it (the notifications list and the WebSocket's notification frame)."""
    return {
        "notification_id": r["notification_id"], "type": r["type"], "priority": r["priority"], "kind": r["kind"],
        "title": r["title"], "body": r["body"], "data": r["data"], "event_ids": list(r["event_ids"]),
        "created_at": r["created_at"].isoformat(), "read": r["read_at"] is not None, "seen": r["seen_at"] is not None,
    }


ITEMS = """
SELECT notification_id, user_id, type, priority, kind, title, body, data, event_ids, created_at, read_at, seen_at
FROM notifications WHERE notification_id = ANY($1::text[]) AND archived_at IS NULL
"""


async def items(pool: asyncpg.Pool, notification_ids: list[str]) -> dict[str, tuple[str, dict]]:
    """``{notification_id: (user_id, item)}`` for those that exist and are not archived."""
    return {r["notification_id"]: (r["user_id"], item(r)) for r in await pool.fetch(ITEMS, notification_ids)}


async def page(pool: asyncpg.Pool, user_id: str, limit: int, cursor: str | None, unread_only: bool) -> dict:
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await pool.fetch(PAGE, user_id, unread_only, after[0], after[1], limit + 1)
    items = [item(r) for r in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["notification_id"]) if len(rows) > limit else None
    return {"user_id": user_id, "notifications": items, "next_cursor": next_cursor}


# ``at`` is when the user acted; None (the API, acting now) is the database's now()
AT = "coalesce($3::timestamptz, now())"


async def mark_read(pool: asyncpg.Pool, user_id: str, notification_id: str, at: datetime | None = None) -> bool:
    """True if the notification exists for this user (marking twice is fine and keeps the first times).
    ``at`` (default now) becomes its read time, and its seen time if it was not seen yet."""
    result = await pool.fetchval(
        f"UPDATE notifications SET read_at = coalesce(read_at, {AT}), seen_at = coalesce(seen_at, {AT}) "
        "WHERE user_id = $1 AND notification_id = $2 RETURNING 1", user_id, notification_id, at)
    return result is not None


async def mark_all_read(pool: asyncpg.Pool, user_id: str, at: datetime | None = None) -> int:
    """Mark every unread notification of the user not archived as read at ``at`` (default now); the number
    marked."""
    status = await pool.execute(
        "UPDATE notifications SET read_at = coalesce($2::timestamptz, now()), seen_at = coalesce(seen_at, $2::timestamptz, now()) "
        "WHERE user_id = $1 AND read_at IS NULL AND archived_at IS NULL", user_id, at)
    return int(status.split()[-1])


async def mark_seen(pool: asyncpg.Pool, user_id: str, notification_id: str, at: datetime | None = None) -> bool:
    """True if the notification exists for this user (seeing twice, or seeing a read one, is fine and keeps
    the first time). ``at`` (default now) becomes its seen time."""
    result = await pool.fetchval(
        f"UPDATE notifications SET seen_at = coalesce(seen_at, {AT}) "
        "WHERE user_id = $1 AND notification_id = $2 RETURNING 1", user_id, notification_id, at)
    return result is not None


async def archive(pool: asyncpg.Pool, user_id: str, notification_id: str, at: datetime | None = None) -> bool:
    """True if the notification exists for this user. An archived one leaves the list and the counts;
    archiving it again is fine and keeps its first archive time. ``at`` (default now) is the archive time."""
    result = await pool.fetchval(
        f"UPDATE notifications SET archived_at = coalesce(archived_at, {AT}) "
        "WHERE user_id = $1 AND notification_id = $2 RETURNING 1", user_id, notification_id, at)
    return result is not None
