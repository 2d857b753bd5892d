"""When each user next needs the clock: an in-memory index per partition, rebuilt from the states table.

The index is not a table: it is derived from the users' states (``policy.next_due``), so the pipeline
rebuilds it from the states table whenever it is given partitions, and no crash can leave it out of step
with the states. Entries are kept in a heap; a user indexed again with another time leaves a stale entry
behind that ``pop_due`` skips.
"""
from __future__ import annotations

import heapq


class DueIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._due)

    def set(self, user_id: str, due_ms: int | None) -> None:
        """Index ``user_id`` at ``due_ms`` (None: not at all)."""
        if due_ms is None:
            self._due.pop(user_id, None)
            return
        if self._due.get(user_id) == due_ms:
            return
        self._due[user_id] = due_ms
        heapq.heappush(self._heap, (due_ms, user_id))

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[str]:
        """The users due at or before ``now_ms``, earliest first, taken out of the index (at most ``limit``)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now_ms and (limit is None or len(out) < limit):
            due_ms, user_id = heapq.heappop(self._heap)
            if self._due.get(user_id) == due_ms:
                del self._due[user_id]
                out.append(user_id)
        return out

    def next(self) -> int | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

