"""The per-user path in one process: the worker's own batch code (``streams.step``) without Kafka or RocksDB.

    python -m bench.policy_path [--events 100000] [--users 25000] [--rounds 3]

Events from ``bench.workload`` (decoded once, before any clock starts) go through what a pipeline batch does
with each of them: the user's state read (orjson, from bytes kept per user as the table keeps them), the
policy, the outputs written in Avro, the changed states written back as JSON at the end of each batch of
1,000. Then every user is released past the end of all their windows and digests, as the clock does.
It prints microseconds per event decided and per user released, for the path as it is and with the policy
copying every state first (``owned`` off: what it did before a user's first change in a batch was made
in place), alternating the two (the machine is shared: compare within a run).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import time
from typing import Any

import fastavro
import orjson

from agents import policy
from agents.preferences import effective
from herald.settings import Settings
from schemas.codec import Codec
from schemas.loader import parsed
from schemas.registry import Registry
from streams.outputs import Outputs
from streams.step import Step

BATCH = 1_000
AT = 1_764_990_000_000


class Table:
    """Users' states as JSON bytes, read and written as ``streams.states.UserStates`` does."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self._pending: list[tuple[str, Any, int]] = []

    def get(self, user_id: str, partition: int) -> dict | None:
        raw = self.raw.get(user_id)
        return None if raw is None else orjson.loads(raw)

    def write(self, changes: list[tuple[str, Any, int]]) -> int:
        self._pending = [(key, None if value is None else orjson.dumps(value), p) for key, value, p in changes]
        return len(changes)

    def apply(self) -> None:
        for key, value, _ in self._pending:
            if value is None:
                self.raw.pop(key, None)
            else:
                self.raw[key] = value

    def persist_offsets(self) -> None:
        pass


class Outbox:
    """Counts what would be produced."""

    exactly_once = True

    def __init__(self) -> None:
        self.records = 0

    def send(self, topic: str, key: bytes | None, value: bytes | None, *args: Any, **kwargs: Any) -> None:
        self.records += 1

    async def flush(self) -> None:
        pass

    async def commit(self) -> None:
        pass


def workload(events: int, users: int) -> list[dict]:
    from bench.workload import generate_events

    schema = parsed("NotificationEvent")
    decoded = []
    for _, value in generate_events(Codec(PreRegistered()), "bench-value", events, users, now_ms=AT):
        event = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, schema)
        decoded.append(policy.normalize(event))
    return decoded


class PreRegistered(Registry):
    """Every subject has an id already: no registry is asked."""

    def __init__(self) -> None:
        super().__init__(url="http://127.0.0.1:9/unused", missing_retries=0)

    def register(self, subject: str, schema_name: str, compatibility: str | None = None) -> int:
        return 2


def run(events: list[dict], in_place: bool) -> tuple[float, float, int]:
    """(µs per event decided, µs per user released, records written)."""
    settings = Settings()
    config = policy.PolicyConfig(batch_window_s=2, digest_period_s=60)
    table, outbox = Table(), Outbox()
    outputs = Outputs(Codec(PreRegistered()), settings)
    prefs: dict[str, dict] = {}
    users: set[str] = set()
    started = time.perf_counter()
    for first in range(0, len(events), BATCH):
        step = Step(table, outputs, outbox, lambda *a: None)  # type: ignore[arg-type]
        for offset, event in enumerate(events[first:first + BATCH], first):
            user = event["user_id"]
            users.add(user)
            mine = prefs.get(user) or prefs.setdefault(user, effective(None, user))
            out = policy.on_event(step.state(user, 0), event, mine, False, event["occurred_at"], f"bench:0:{offset}",
                                  config, offset=offset, owned=in_place and step.owned(user))
            step.apply(user, 0, out)
        asyncio.run(step.commit())
    decided = time.perf_counter() - started
    later = events[-1]["occurred_at"] + 3_600_000
    started = time.perf_counter()
    ordered = sorted(users)
    for first in range(0, len(ordered), BATCH):
        step = Step(table, outputs, outbox, lambda *a: None)  # type: ignore[arg-type]
        for user in ordered[first:first + BATCH]:
            state = step.state(user, 0)
            if state is not None and policy.next_due(state) is not None:
                step.apply(user, 0, policy.on_tick(state, prefs[user], False, later, config,
                                                   owned=in_place and step.owned(user)))
        asyncio.run(step.commit())
    released = time.perf_counter() - started
    return decided / len(events) * 1e6, released / len(users) * 1e6, outbox.records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="workload events (default 100,000)")
    parser.add_argument("--users", type=int, default=25_000, help="workload users (default 25,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args(argv)
    events = workload(args.events, args.users)
    results: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for in_place in (False, True):
            results[in_place].append(run(events, in_place))
    if len({r[2] for rs in results.values() for r in rs}) != 1:
        raise SystemExit("the two paths wrote different numbers of records")
    for in_place, label in ((False, "every state copied"), (True, "as the worker runs")):
        rs = results[in_place]
        print(f"{label:19} decide {min(r[0] for r in rs):6.1f} µs/event   release {min(r[1] for r in rs):6.1f} µs/user"
              f"   (best of {args.rounds}; {args.events:,} events, {args.users:,} users, {rs[0][2]:,} records)")


if __name__ == "__main__":
    main()
