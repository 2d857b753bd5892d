"""Which CRITICAL events not yet handed to the pipeline may be decided now, ahead of the batch in flight.

A CRITICAL event should not wait for the batch being decided when it arrives, nor for the batches and
digests released with it (``agents.order`` lets one overtake the rest of its own batch; this goes further).
A second reader in the worker sees every events record past where the pipeline stands, in offset order
per partition (``streams.express``), and tells this ``Lane`` the user of each (None when it cannot be
read) and which are CRITICAL. Such an event goes ahead when its decision is the one the read order gives:

- everything on its partition after the records of the last batch the pipeline decided was seen, so
  nothing unseen could touch its user (until the pipeline's records reach where the second reader
  started, nothing goes);
- no record of its user is among those (the batch in flight's included: they are the pipeline's only once
  it has decided them, ``taken``), and none that could not be read (it could be its user's). Records of
  its user that the reader kept (``seen``'s ``record``) do not hold it back: they go ahead with it, first,
  in offset order (``earlier``), so the user's decisions are still made in the read order;
- no tick of its partition still to be decided in the batch in flight can touch its user. Such a tick
  releases the partition's users due at or before its clock, which is at most the tick's own time
  (``agents.clock.tick_time``). So the event goes ahead of it only if its user is due after that time (or
  not at all) both before the event's decision (``ready`` asks) and after it (the caller checks the
  outcome, ``until``): the tick then releases the same users, within the same budget, in either order.
  Without the user's due time (``due`` None) the tick holds back every CRITICAL event of its partition.
  ``ready`` names the partitions whose ticks held one back (``tick_held``), so that the caller may decide
  those ticks before the batch's events still to decide (``agents.order``) and let the event go sooner.

While a batch commits, the lane goes on into the next batch's step, but not for a user that batch read or
changed (``busy``): that user's state is not in the table until the commit is over.

A user's decisions depend on that user's records and releases alone, so every decision is the one the
read order gives. When the pipeline reads an event that went ahead, its user's state has already taken it
in (``upto``), and the policy changes nothing. One that was not decided after all (it failed to validate,
say) stays pending: it is decided when the pipeline reads it, and until then holds back its user's later
CRITICAL events. The same goes for an earlier record of the run that was not decided: the caller stops
there, and the CRITICAL event is left to the pipeline.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Container, Mapping

LIMIT = 50_000  # unread records remembered per partition; past that the partition starts over (nothing goes ahead
# until the pipeline reaches the records seen after that): a worker that far behind has no live lane to keep
KEEP = 20_000  # unread records whose ``record`` is kept per partition; later ones are remembered without it


class Lane:
    def __init__(self, limit: int = LIMIT, keep: int = KEEP) -> None:
        self._limit = limit
        self._keep = keep
        self.reset()

    def reset(self) -> None:
        """Forget everything: at an assignment or a revocation."""
        self._start: dict[int, int] = {}  # partition -> the first offset seen since the last (re)start
        self._taken: dict[int, int] = {}  # partition -> the last offset handed to the pipeline
        self._fifo: dict[int, deque] = {}  # partition -> [offset, user or None, pending] of records not taken, in order
        self._pending: dict[int, dict[str, deque]] = {}  # partition -> user -> offsets of its records not decided
        self._unreadable: dict[int, deque] = {}  # partition -> offsets of records whose user is not known
        self.waiting: dict[tuple[int, int], tuple[str, Any]] = {}  # (partition, offset) -> (user, payload)
        self._records: dict[tuple[int, int], Any] = {}  # (partition, offset) -> ``seen``'s ``record``, not taken
        # (partition, offset) -> its ``_fifo`` entry, for ``decided``: CRITICAL events and the records kept
        self._entries: dict[tuple[int, int], list] = {}
        self.tick_held: set[int] = set()  # partitions whose ticks held back a CRITICAL event at the last ``ready``

    def seen(self, partition: int, offset: int, user_id: str | None, payload: Any = None, after_gap: bool = False,
             record: Any = None) -> None:
        """A record past the pipeline's position, in offset order on its partition: its user (None: not
        known), and for a CRITICAL event that may go ahead, what to decide it with. ``after_gap``: records
        of the partition just before it were not seen (the partition starts over here). ``record``: for
        another record of a known user, what to decide it with when a later CRITICAL event of its user
        goes ahead (None: it holds such events back until the pipeline takes it)."""
        if offset <= self._taken.get(partition, -1):
            return
        fifo = self._fifo.setdefault(partition, deque())
        if len(fifo) >= self._limit or after_gap:
            self._restart(partition)
            fifo = self._fifo.setdefault(partition, deque())
        self._start.setdefault(partition, offset)
        entry = [offset, user_id, True]
        fifo.append(entry)
        if user_id is None:
            self._unreadable.setdefault(partition, deque()).append(offset)
            return
        self._pending.setdefault(partition, {}).setdefault(user_id, deque()).append(offset)
        if payload is not None:
            self.waiting[partition, offset] = (user_id, payload)
            self._entries[partition, offset] = entry
        elif record is not None and len(fifo) <= self._keep:
            self._records[partition, offset] = record
            self._entries[partition, offset] = entry

    def taken(self, partition: int, offset: int) -> None:
        """The pipeline has decided the partition's records up to ``offset`` (in its batch in flight)."""
        if offset <= self._taken.get(partition, -1):
            return
        self._taken[partition] = offset
        fifo = self._fifo.get(partition)
        while fifo and fifo[0][0] <= offset:
            entry_offset, user_id, pending = fifo.popleft()
            self.waiting.pop((partition, entry_offset), None)
            self._entries.pop((partition, entry_offset), None)
            self._records.pop((partition, entry_offset), None)
            if not pending:
                continue
            if user_id is None:
                self._unreadable[partition].popleft()
                continue
            offsets = self._pending[partition][user_id]
            offsets.popleft()
            if not offsets:
                del self._pending[partition][user_id]

    def ready(self, ticking: Mapping[int, int], due: Callable[[str, int], int | None] | None = None,
              busy: Container[str] = frozenset()) -> list[tuple[int, int, str, Any, int | None, list]]:
        """The waiting CRITICAL events that may be decided now, in offset order per partition, as
        (partition, offset, user, payload, until, earlier); they stop waiting. ``earlier``: the (offset,
        record) of the user's records before it that the pipeline has not decided, to decide first, in
        order (each then ``decided``); if one of them is not decided, the event is left to the pipeline.

        ``ticking``: the partitions with a tick of the batch in flight still to decide, each with the latest
        time those ticks may release at. ``due(user, partition)``: when the user is next due (None: not).
        An event of a ticking partition goes only when its user is due after that time; ``until`` is then
        that time, and the caller must decide the event only if the decision leaves its user due after
        ``until`` too (else it leaves the event to the pipeline). ``until`` is None without a tick.
        ``busy``: users whose states are being written (the batch committing); their events wait.
        ``tick_held`` is then the partitions whose ticks held one back."""
        self.tick_held = set()
        if not self.waiting:
            return []
        ready = []
        for (partition, offset), (user_id, payload) in sorted(self.waiting.items()):
            if user_id in busy:
                continue
            until = ticking.get(partition)
            if until is not None:
                when = due(user_id, partition) if due is not None else until
                if when is not None and when <= until:
                    self.tick_held.add(partition)
                    continue  # a tick still to decide may release its user
            start = self._start.get(partition)
            if start is None or self._taken.get(partition, -2) + 1 < start:
                continue  # records between the pipeline's and the first seen are unknown
            unreadable = self._unreadable.get(partition)
            if unreadable and unreadable[0] < offset:
                continue
            earlier = self._earlier(partition, offset, user_id)
            if earlier is None:
                continue  # an earlier record of the user is not decided yet, and cannot go ahead with it
            ready.append((partition, offset, user_id, payload, until, earlier))
        for partition, offset, *_ in ready:
            del self.waiting[partition, offset]
        return ready

    def _earlier(self, partition: int, offset: int, user_id: str) -> list[tuple[int, Any]] | None:
        """The user's records before ``offset`` not decided yet, each with what to decide it with; None when
        one of them was not kept, or is a CRITICAL event (it goes first, on its own)."""
        earlier: list[tuple[int, Any]] = []
        for pending in self._pending[partition][user_id]:
            if pending == offset:
                return earlier
            record = self._records.get((partition, pending))
            if record is None:
                return None
            earlier.append((pending, record))
        return None

    def decided(self, partition: int, offset: int, user_id: str) -> None:
        """The record at ``offset`` (a CRITICAL event from ``ready``, or one of its ``earlier``) was decided: it
        no longer holds its user's later ones."""
        offsets = self._pending[partition][user_id]
        offsets.remove(offset)
        if not offsets:
            del self._pending[partition][user_id]
        self._entries.pop((partition, offset))[2] = False
        self._records.pop((partition, offset), None)

    def _restart(self, partition: int) -> None:
        for table in (self._start, self._fifo, self._pending, self._unreadable):
            table.pop(partition, None)
        for by_offset in (self.waiting, self._entries, self._records):
            for key in [k for k in by_offset if k[0] == partition]:
                del by_offset[key]
