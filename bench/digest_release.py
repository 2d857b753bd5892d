"""A digest release in one process: what the clock does for each user due at a period's end, without Kafka
or RocksDB.

    python -m bench.digest_release [--users 50000] [--rounds 3]

Each user's state is what ``bench.digest_seed`` writes for the ``herald bench`` digest phase: the policy's
own state after one LOW event in a digest period, kept as JSON bytes as the table keeps them. The users
are indexed by when they are due (``streams.due.DueIndex``) and released as ``streams.clock.Clock`` does,
in batches of ``HERALD_RELEASE_CHUNK``: the state read (orjson), the due check, ``policy.on_tick`` with the
preferences of a user without a record, the outputs encoded in Avro, the user indexed again, and the
changed states written back as JSON when each batch commits. Records are counted, not produced. The garbage
collector is tuned as the worker tunes it (``streams.commands.tune_gc``).

It prints CPU microseconds per user released (the best of ``--rounds``) and the records written, which must be
a digest request and a decision per user.

To compare two builds, check the other one out (``git worktree add /tmp/base HEAD~1``) and pass
``--baseline /tmp/base``: both run ``--pairs`` times, one after the other, and the figures of all their
rounds are printed side by side. On a shared machine even CPU time varies by tens of percent;
``--instructions`` counts the instructions a user's release executes instead (valgrind's cachegrind, the
same run with one round and with two, subtracted), which repeats within about 0.5%.

    python -m bench.digest_release --users 20000 --baseline /tmp/base
    python -m bench.digest_release --users 3000 --instructions --baseline /tmp/base
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import orjson

from agents import policy
from agents.preferences import effective
from bench.digest_seed import FIELDS
from bench.policy_path import Outbox, PreRegistered, Table
from herald.settings import Settings
from schemas.codec import Codec
from streams.clock import due_time
from streams.commands import tune_gc
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


REPO = Path(__file__).resolve().parent.parent
ROUNDS = re.compile(r"per round: ([0-9., ]+)\)")
I_REFS = re.compile(r"I\s+refs:\s+([0-9,]+)")


def _own_run(checkout: Path, args: list[str], valgrind: bool = False) -> subprocess.CompletedProcess:
    """This command run in ``checkout`` (its code, this interpreter)."""
    if not (checkout / "bench" / "digest_release.py").is_file():
        raise SystemExit(f"{checkout} has no bench/digest_release.py: pass a checkout of Herald from 274a5f8 on")
    command = [sys.executable, "-m", "bench.digest_release", *args]
    if valgrind:
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", *command]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run in {checkout} failed:\n{done.stdout}{done.stderr}")
    return done


def rounds_of(output: str) -> list[float]:
    """The per-round figures a run printed."""
    found = ROUNDS.search(output)
    if found is None:
        raise ValueError(f"no per-round figures in {output!r}")
    return [float(x) for x in found.group(1).split(", ")]


def instructions_of(output: str) -> int:
    """The instructions cachegrind counted (its "I refs" line)."""
    found = I_REFS.search(output)
    if found is None:
        raise ValueError("no I refs line in valgrind's output")
    return int(found.group(1).replace(",", ""))


def instructions(checkout: Path, users: int) -> float:
    """Instructions one user's release executes in ``checkout``: the run with two rounds minus the one with one."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with ThreadPoolExecutor(2) as pool:  # the two counts are independent: run them side by side
        one, two = pool.map(lambda r: _own_run(checkout, ["--users", str(users), "--rounds", str(r)], valgrind=True),
                            (1, 2))
    return (instructions_of(two.stderr) - instructions_of(one.stderr)) / users


def compare(args: argparse.Namespace) -> None:
    """This checkout against ``--baseline``, by instructions or by CPU time over ``--pairs`` alternations."""
    sides = {"baseline": args.baseline.resolve(), "this": REPO}
    if args.instructions:
        for name, checkout in sides.items():
            print(f"{name:8} {instructions(checkout, args.users):10,.0f} instructions a user released   ({checkout})")
        return
    figures: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.pairs):
        for name, checkout in sides.items():
            out = _own_run(checkout, ["--users", str(args.users), "--rounds", str(args.rounds)]).stdout
            figures[name] += rounds_of(out)
    for name, got in figures.items():
        print(f"{name:8} min {min(got):6.1f}  median {statistics.median(got):6.1f}  max {max(got):6.1f} µs/user "
              f"(CPU; {len(got)} rounds, {args.users:,} users)   ({sides[name]})")


@contextmanager
def worker_gc() -> Iterator[None]:
    """The garbage collector as `herald worker` sets it before it starts, and as it was again afterwards (the
    tests call ``main`` in their own process)."""
    threshold = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50_000, help="users with a digest due (default 50,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is printed (default 3)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of Herald to compare with, run the same way one after the other")
    parser.add_argument("--pairs", type=int, default=5,
                        help="with --baseline: how many times each side runs, alternating (default 5)")
    parser.add_argument("--instructions", action="store_true",
                        help="count the instructions a user's release executes (valgrind) instead of timing it")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        return compare(args)
    if args.instructions:
        print(f"{instructions(REPO, args.users):,.0f} instructions a user released ({args.users:,} users)")
        return
    settings = Settings(digest_period_s=PERIOD_S, dedup_window_s=3_600)  # as `herald bench` digest phase
    with worker_gc():
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
