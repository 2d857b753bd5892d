"""In which order a batch's records are decided: CRITICAL first where that changes no decision.

The rule: a CRITICAL event is decided before the rest of its batch, so that it does not wait behind a
thousand other users' events and the batches and digests the clock releases with them, when nothing
earlier in the batch touches its user: no record of that user, and no tick of its partition (a tick
releases that partition's users, the CRITICAL's among them). Everything else keeps the order it was
read in. A user's decisions depend on that user's records and releases alone (a CRITICAL event takes no
token of the worker-wide limits, being exempt), so every decision is the one the read order gives.

A tick may also be decided before events read ahead of it (``Ahead``): Kafka orders records within a
topic partition only, and a tick and the events read around it are on two topics, so the order with the
tick moved up is one they could have been read in too. It keeps each topic partition's order and passes no
CRITICAL event that overtook the tick. The worker does it for a partition whose tick holds back an event of
the CRITICAL lane (``agents.lane``), so that the event waits for the tick's releases only, not for the
batch's events read before the tick (and ``streams.clock`` stops those releases short while it waits).
Otherwise it keeps the read order, in which a user's events join the batches and digests a tick then
releases with them.
"""
from __future__ import annotations

from typing import Sequence

# (partition, user_id, priority) of an event to decide; (partition, None, None) for a tick of that
# partition; None for a record that decides nothing (dead-lettered, moved home)
Item = tuple[int, str | None, str | None] | None


def overtaking(items: Sequence[Item]) -> tuple[list[int], list[int]]:
    """The positions of the CRITICAL events that overtake, and of the rest, each in read order."""
    users: set[str] = set()
    ticked: set[int] = set()
    first: list[int] = []
    rest: list[int] = []
    for i, item in enumerate(items):
        if item is not None:
            partition, user_id, priority = item
            if user_id is None:
                ticked.add(partition)
            else:
                overtakes = priority == "CRITICAL" and user_id not in users and partition not in ticked
                users.add(user_id)
                if overtakes:
                    first.append(i)
                    continue
        rest.append(i)
    return first, rest


class Ahead:
    """The ticks among ``rest`` (positions in read order, ``overtaking``'s second list), by partition, so that
    a partition's can be decided ahead of their place (``pull``) and then skipped where they were (``skip``)."""

    def __init__(self, items: Sequence[Item], rest: Sequence[int]) -> None:
        self._ticks: dict[int, list[int]] = {}  # partition -> positions of its ticks not decided, in read order
        self._partition_of: dict[int, int] = {}  # position of a tick -> its partition
        for i in rest:
            item = items[i]
            if item is not None and item[1] is None:
                self._ticks.setdefault(item[0], []).append(i)
                self._partition_of[i] = item[0]
        self._pulled: set[int] = set()

    def pending(self) -> set[int]:
        """The partitions with a tick not decided yet."""
        return set(self._ticks)

    def pull(self, partition: int) -> list[int]:
        """The partition's ticks not decided yet, in read order, to decide now."""
        ticks = self._ticks.pop(partition, [])
        self._pulled.update(ticks)
        return ticks

    def skip(self, i: int) -> bool:
        """Whether position ``i`` of ``rest``, reached in its place, was decided ahead (``pull``); a tick that was
        not is decided there, and no longer pulled."""
        if i in self._pulled:
            return True
        partition = self._partition_of.get(i)
        if partition is not None:
            ticks = self._ticks[partition]
            ticks.remove(i)
            if not ticks:
                del self._ticks[partition]
        return False
