"""When each user next needs the clock: an in-memory index per partition, rebuilt from the states table.

The index is not a table: it is derived from the users' states (``policy.next_due``), so the pipeline
rebuilds it from the states table whenever it is given partitions, and no crash can leave it out of step
with the states.

Users are kept in buckets, one per distinct due time, the times in a heap: a million users due at one
digest period's end share one time, one int and one list, where a heap entry per user cost a tuple and an
int each (``python -m bench.due_memory`` measures both). A user indexed again at another time leaves a
stale entry in its old bucket; ``pop_due`` and ``next`` skip those, so each user comes out once, at the
time it was last given.
"""
from __future__ import annotations

import heapq


class _Bucket:
    __slots__ = ("due_ms", "users", "taken")

    def __init__(self, due_ms: int) -> None:
        self.due_ms = due_ms  # the one int every user due then shares
        self.users: list[str | None] = []
        self.taken = 0  # users before this position are popped or stale


class DueIndex:
    def __init__(self) -> None:
        self._due: dict[str, int] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._times: list[int] = []  # a heap of the buckets' times

    def __len__(self) -> int:
        return len(self._due)

    def set(self, user_id: str, due_ms: int | None) -> None:
        """Index ``user_id`` at ``due_ms`` (None: not at all)."""
        if due_ms is None:
            self._due.pop(user_id, None)
            return
        if self._due.get(user_id) == due_ms:
            return
        bucket = self._buckets.get(due_ms)
        if bucket is None:
            bucket = self._buckets[due_ms] = _Bucket(due_ms)
            heapq.heappush(self._times, due_ms)
        self._due[user_id] = bucket.due_ms
        bucket.users.append(user_id)

    def due(self, user_id: str) -> int | None:
        """When ``user_id`` is due (None: not indexed)."""
        return self._due.get(user_id)

    def _front(self) -> _Bucket | None:
        """The earliest bucket with a user still due at its time, stale entries and empty buckets dropped."""
        while self._times:
            bucket = self._buckets[self._times[0]]
            users, due = bucket.users, self._due
            while bucket.taken < len(users):
                user = users[bucket.taken]
                if user is not None and due.get(user) == bucket.due_ms:
                    return bucket
                users[bucket.taken] = None
                bucket.taken += 1
            del self._buckets[heapq.heappop(self._times)]
        return None

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[str]:
        """The users due at or before ``now_ms``, earliest first, taken out of the index (at most ``limit``)."""
        out: list[str] = []
        while limit is None or len(out) < limit:
            bucket = self._front()
            if bucket is None or bucket.due_ms > now_ms:
                break
            user = bucket.users[bucket.taken]
            assert user is not None  # _front stops only at a user due then
            bucket.users[bucket.taken] = None  # the string goes with the index's last reference
            bucket.taken += 1
            del self._due[user]
            out.append(user)
        return out

    def next(self) -> int | None:
        """The earliest time a user is due (None: no user indexed)."""
        bucket = self._front()
        return bucket.due_ms if bucket else None
