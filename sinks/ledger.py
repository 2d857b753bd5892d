"""The once-only ledger and the retry schedule, in PostgreSQL's ``delivery_ledger`` (migrations 001, 003, 005, 006).

Rules:

- ``claim`` before a provider sees a request: ``INSERT ... ON CONFLICT DO NOTHING``. Only the process whose
  insert went in may send; everyone else learns the row's status (SENT, SUPPRESSED, DEAD: done; RETRYING:
  the schedule owns it; CLAIMED: another process is sending it) and sends nothing. That is what makes a
  record read again after a crash, a rebalance or a replay harmless.
- ``record`` writes each outcome after the send: a final status (the request's bytes are dropped), or
  RETRYING with ``due_at`` and the bytes kept, so the Kafka offset can be committed and the partition goes
  on while the request waits here.
- ``take_due`` claims due RETRYING rows (``FOR UPDATE SKIP LOCKED``: each goes to one process) for another
  attempt.
- every outcome is written ``reported = false`` and set ``true`` once its status record is acknowledged. An
  outcome still unreported a lease after it was written (its process died in between) is reported by whoever
  finds it: the sink that reads the request again, or ``take_unreported``. So no attempt's final status is
  lost. Within the lease it is left to its writer, which may be alive and about to report it: a partition
  that moves while its owner is mid-batch (its poll interval exceeded while the database was away) is
  read again by the new owner, which must not report that batch's outcomes a second time.
- every scan (``take_due``, ``take_unreported``, ``take_in_doubt``) sees only the rows of this deployment
  (``app``, the ``HERALD_APP_ID``; migration 006): deployments sharing a database never retry, report or
  settle each other's requests. Rows from before the column have no app and are everyone's.
- ``take_in_doubt`` settles claims older than the lease, whose process died between claim and outcome: the
  provider may or may not have the message, and once-only forbids a second try, so they become DEAD
  (``IN_DOUBT``) for an operator to look at. The window is one send (a few ms, at most the send timeout)
  plus the ledger write of the batch.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import asyncpg

FINAL = ("SENT", "SUPPRESSED", "DEAD")

CLAIM = """
INSERT INTO delivery_ledger (delivery_id, channel, status, attempts, user_id, claimed_by, claimed_at, request,
                             source, updated_at, app)
SELECT t.delivery_id, $5, 'CLAIMED', 0, t.user_id, $6, now(), t.request, t.source, now(), $7
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[]) AS t(delivery_id, user_id, request, source)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING delivery_id
"""

EXISTING = """
SELECT delivery_id, status, claimed_at < now() - make_interval(secs => $2) AS stale, reported, attempts,
       last_error, provider, claimed_by, updated_at < now() - make_interval(secs => $2) AS settled
FROM delivery_ledger WHERE delivery_id = ANY($1::text[])
"""

REPORTED = """
UPDATE delivery_ledger SET reported = true WHERE delivery_id = ANY($1::text[]) AND NOT reported
"""

TAKE_UNREPORTED = """
SELECT delivery_id, status, attempts, last_error, provider FROM delivery_ledger
WHERE channel = $1 AND NOT reported AND status <> 'CLAIMED' AND updated_at < now() - make_interval(secs => $2)
  AND (app = $4 OR app IS NULL)
LIMIT $3
"""

RECORD = """
UPDATE delivery_ledger AS l
SET status = r.status, attempts = r.attempts, provider = $7, last_error = r.error,
    due_at = CASE WHEN r.status = 'RETRYING' THEN now() + make_interval(secs => r.delay) END,
    done = string_to_array(r.done, E'\\n'),
    sent_at = CASE WHEN r.status = 'SENT' THEN now() ELSE l.sent_at END,
    request = CASE WHEN r.status = 'RETRYING' THEN l.request END,
    claimed_by = NULL, updated_at = now(), reported = false
FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::float8[], $6::text[])
     AS r(delivery_id, status, attempts, error, delay, done)
WHERE l.delivery_id = r.delivery_id AND l.status = 'CLAIMED'
"""

TAKE_DUE = """
UPDATE delivery_ledger AS l SET status = 'CLAIMED', claimed_by = $2, claimed_at = now(), updated_at = now()
WHERE l.delivery_id IN (SELECT delivery_id FROM delivery_ledger
                        WHERE channel = $1 AND status = 'RETRYING' AND due_at <= now()
                          AND (app = $4 OR app IS NULL)
                        ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING l.delivery_id, l.attempts, l.request, l.source, l.done
"""

TAKE_IN_DOUBT = """
UPDATE delivery_ledger AS l
SET status = 'DEAD', claimed_by = NULL, request = NULL, updated_at = now(), reported = false,
    last_error = 'IN_DOUBT: the sending process stopped between claim and outcome'
WHERE l.delivery_id IN (SELECT delivery_id FROM delivery_ledger
                        WHERE channel = $1 AND status = 'CLAIMED' AND claimed_at < now() - make_interval(secs => $2)
                          AND (app = $4 OR app IS NULL)
                        LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING l.delivery_id, l.attempts, l.request, l.source
"""


@dataclass
class Source:
    """Where a request was read: for the dead-letter headers and the original key and headers."""
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def to_json(self) -> str:
        enc = lambda b: base64.b64encode(b).decode() if b is not None else None  # noqa: E731
        return json.dumps({"topic": self.topic, "partition": self.partition, "offset": self.offset,
                           "key": enc(self.key), "headers": [[k, enc(v)] for k, v in self.headers]})

    @classmethod
    def from_json(cls, text: str | None) -> "Source":
        if not text:
            return cls("", -1, -1)
        d = json.loads(text)
        dec = lambda s: base64.b64decode(s) if s is not None else None  # noqa: E731
        return cls(d["topic"], d["partition"], d["offset"], dec(d.get("key")),
                   [(k, dec(v) or b"") for k, v in d.get("headers") or []])


@dataclass
class Mark:
    """One outcome to write: the ledger status, the attempts made, and for RETRYING its delay."""
    delivery_id: str
    status: str
    attempts: int
    error: str | None = None
    delay_s: float = 0.0
    done: set[str] = field(default_factory=set)


class Ledger:
    def __init__(self, pool: asyncpg.Pool, channel: str, worker_id: str, lease_s: float, app: str) -> None:
        self.pool = pool
        self.app = app
        self.channel = channel
        self.worker_id = worker_id
        self.lease_s = lease_s

    async def claim(self, items: list[tuple[str, str, bytes, Source]]) -> tuple[set[str], dict[str, str], list]:
        """Claim ``(delivery_id, user_id, raw, source)`` items. Returns the ids claimed now, for the others
        their current status (``CLAIMED_STALE`` for a claim past its lease), and the rows among them whose
        outcome was written more than a lease ago and never reported (a process died between the ledger
        write and the status record).

        A row CLAIMED by this ledger's own ``worker_id`` counts as claimed now: a process has one claim of a
        delivery in flight at a time, and records its outcome before it claims again, so such a row is this
        call's own insert whose answer was lost (the database went away after committing it, and the caller
        tried again). Without this it would sit out its lease and be settled DEAD as in doubt, never sent."""
        if not items:
            return set(), {}, []
        async with self.pool.acquire() as conn:
            claimed = {r["delivery_id"] for r in await conn.fetch(
                CLAIM, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
                [i[3].to_json() for i in items], self.channel, self.worker_id, self.app)}
            others = [i[0] for i in items if i[0] not in claimed]
            existing: dict[str, str] = {}
            unreported = []
            if others:
                for r in await conn.fetch(EXISTING, others, self.lease_s):
                    if r["status"] == "CLAIMED" and r["claimed_by"] == self.worker_id:
                        # this very call's insert, made by an earlier try whose answer the connection lost
                        claimed.add(r["delivery_id"])
                        continue
                    existing[r["delivery_id"]] = "CLAIMED_STALE" if r["status"] == "CLAIMED" and r["stale"] else r["status"]
                    if not r["reported"] and r["status"] != "CLAIMED" and r["settled"]:
                        unreported.append(r)
        return claimed, existing, unreported

    async def reported(self, delivery_ids: list[str]) -> None:
        if delivery_ids:
            async with self.pool.acquire() as conn:
                await conn.execute(REPORTED, delivery_ids)

    async def take_unreported(self, limit: int = 500) -> list[asyncpg.Record]:
        """Outcomes written more than a lease ago and still not reported (their Kafka record is not read
        again: retries, or offsets another process committed)."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(TAKE_UNREPORTED, self.channel, self.lease_s, limit, self.app)

    async def record(self, marks: list[Mark], provider: str) -> None:
        if not marks:
            return
        async with self.pool.acquire() as conn:
            await conn.execute(RECORD, [m.delivery_id for m in marks], [m.status for m in marks],
                               [m.attempts for m in marks],
                               [m.error.replace("\x00", "") if m.error else m.error for m in marks],
                               [m.delay_s for m in marks],
                               ["\n".join(sorted(m.done)) for m in marks], provider)

    async def take_due(self, limit: int) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(TAKE_DUE, self.channel, self.worker_id, limit, self.app)

    async def take_in_doubt(self, limit: int = 100) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(TAKE_IN_DOUBT, self.channel, self.lease_s, limit, self.app)
