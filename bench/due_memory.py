"""The clock's due index in memory: what a worker holds per user waiting for a release, against a baseline.

``streams.due.DueIndex`` for N users (the digest case: every user due at one of a few period ends), and
in the same run the design it replaced (one heap entry per user beside the user -> time map). Each is
given the same user ids, made as it goes (as a worker decodes them from its table's keys), and measured
with ``tracemalloc`` (Python's own allocations, not the machine's noise); then the time to index them all
and to pop them all in release-sized chunks.

    python -m bench.due_memory --users 1000000
    DueIndex            <MB> for 1,000,000 users (<B> a user); set <s>, pop <s>
    heap per user       <MB> for 1,000,000 users (...)
"""
from __future__ import annotations

import argparse
import gc
import heapq
import time
import tracemalloc
from typing import Callable

from streams.due import DueIndex

NOW = 1_800_000_000_000


class HeapPerUser:
    """The design ``DueIndex`` replaced: a ``(time, user)`` heap entry per user beside a user -> time map."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def set(self, user_id: str, due_ms: int | None) -> None:
        if due_ms is None:
            self._due.pop(user_id, None)
            return
        if self._due.get(user_id) == due_ms:
            return
        self._due[user_id] = due_ms
        heapq.heappush(self._heap, (due_ms, user_id))

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[str]:
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now_ms and (limit is None or len(out) < limit):
            due_ms, user_id = heapq.heappop(self._heap)
            if self._due.get(user_id) == due_ms:
                del self._due[user_id]
                out.append(user_id)
        return out


def measure(name: str, make: Callable[[], object], users: int, periods: int, chunk: int) -> dict:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    index = make()
    for i in range(users):  # each id made here, as the worker decodes each from its RocksDB key: the index holds it
        index.set(f"bench-user-{i}", NOW + (i % periods) * 10_000 + 1)  # type: ignore[attr-defined]
    set_s = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    started = time.perf_counter()
    popped = 0
    while batch := index.pop_due(NOW + periods * 10_000, limit=chunk):  # type: ignore[attr-defined]
        popped += len(batch)
    pop_s = time.perf_counter() - started
    assert popped == users, (name, popped)
    return {"name": name, "mb": held / 2**20, "bytes_per_user": held / users, "set_s": set_s, "pop_s": pop_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.due_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="users indexed (default 1,000,000)")
    parser.add_argument("--periods", type=int, default=3, help="distinct due times they share (default 3)")
    parser.add_argument("--chunk", type=int, default=1_000, help="users popped at a time (default 1,000)")
    args = parser.parse_args(argv)
    for name, make in (("DueIndex", DueIndex), ("heap per user", HeapPerUser)):
        r = measure(name, make, args.users, max(1, args.periods), max(1, args.chunk))
        print(f"{r['name']:<18} {r['mb']:7.1f} MB for {args.users:,} users ({r['bytes_per_user']:.0f} B a user); "
              f"set {r['set_s']:.2f} s, pop {r['pop_s']:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
