"""A digest release in one process: what the clock does for each user due at a period's end, without Kafka
or RocksDB.

    python -m bench.digest_release [--users 50000] [--rounds 3]

Each user's state is what ``bench.digest_seed`` writes for the ``herald bench`` digest phase: the policy's
own state after one LOW event in a digest period, kept as JSON bytes as the table keeps them. The users
are indexed by when they are due (``streams.due.DueIndex``) and released as ``streams.clock.Clock`` does,
in batches of ``HERALD_RELEASE_CHUNK``: the state read (orjson), the due check, ``policy.on_tick`` with the
preferences of a user without a record, the outputs encoded in Avro, the user indexed again, and the
changed states written back as JSON when each batch commits. Records are counted, not produced.

It prints CPU microseconds per user released (the best of ``--rounds``) and the records written, which must be
a digest request and a decision per user. Compare two builds by running each in its own checkout, one
after the other, a few times (the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from agents import policy
from agents.preferences import effective
from bench.digest_seed import FIELDS
from bench.policy_path import Outbox, PreRegistered, Table
from herald.settings import Settings
from schemas.codec import Codec
from streams.clock import due_time
from streams.config import policy_config
from streams.due import DueIndex
from streams.outputs import Outputs
from streams.step import Step

PERIOD_S = 60
AT = 1_764_990_000_000 - 1_764_990_000_000 % (PERIOD_S * 1000) + 1_000  # a second into a period


def seeded(users: int, settings: Settings) -> dict[str, bytes]:
    """Each user's state after one LOW event in the digest period, as JSON bytes (``bench.digest_seed``)."""
    config = policy_config(settings)
    states = {}
    for i in range(users):
        user = f"digest-user-{i}"
        event = {"event_id": f"dg-{i}", "user_id": user, "data": {"entity_id": str(i)}, "occurred_at": AT, **FIELDS}
        out = policy.on_event(None, event, effective(None, user), False, AT, f"events:seed:{i}", config)
        states[user] = orjson.dumps(out.state)
    return states


def release(states: dict[str, bytes], settings: Settings) -> tuple[float, int]:
    """(µs per user released, records written)."""
    config = policy_config(settings)
    table, outbox = Table(), Outbox()
    table.raw = dict(states)
    outputs = Outputs(Codec(PreRegistered()), settings)
    prefs = effective(None, "")
    index = DueIndex()
    for user, raw in table.raw.items():
        index.set(user, due_time(orjson.loads(raw)))
    now_ms = index.next() or 0

    def reindex(user_id: str, partition: int, state: dict) -> None:
        index.set(user_id, due_time(state))

    started = time.process_time()  # the process's own CPU time: a shared machine's steal time is not in it
    popped = 0
    while popped < len(states) and (chunk := index.pop_due(now_ms, limit=settings.release_chunk)):
        popped += len(chunk)  # a user the policy left due would come back: each is released once here
        step = Step(table, outputs, outbox, reindex)  # type: ignore[arg-type]
        for user in chunk:
            state = step.state(user, 0)
            when = policy.next_due(state) if state else None
            if when is None or when > now_ms:
                continue
            step.apply(user, 0, policy.on_tick(state, prefs, False, now_ms, config, owned=step.owned(user)))
        asyncio.run(step.commit())
    return (time.process_time() - started) / len(states) * 1e6, outbox.records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50_000, help="users with a digest due (default 50,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is printed (default 3)")
    args = parser.parse_args(argv)
    settings = Settings(digest_period_s=PERIOD_S, dedup_window_s=3_600)  # as `herald bench` digest phase
    states = seeded(args.users, settings)
    results = [release(states, settings) for _ in range(args.rounds)]
    records = {r[1] for r in results}
    if records != {2 * args.users}:
        raise SystemExit(f"expected a digest request and a decision per user ({2 * args.users:,} records), "
                         f"got {sorted(records)}")
    print(f"digest release {min(r[0] for r in results):6.1f} µs/user   (best of {args.rounds}; "
          f"{args.users:,} users, {results[0][1]:,} records; per round: "
          f"{', '.join(f'{r[0]:.1f}' for r in results)})")


if __name__ == "__main__":
    main()
