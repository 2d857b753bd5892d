"""In which order a batch's records are decided: CRITICAL first where that changes no decision.

The rule: a CRITICAL event is decided before the rest of its batch, so that it does not wait behind a
thousand other users' events and the batches and digests the clock releases with them, when nothing
earlier in the batch touches its user: no record of that user, and no tick of its partition (a tick
releases that partition's users, the CRITICAL's among them). Everything else keeps the order it was
read in. A user's decisions depend on that user's records and releases alone (a CRITICAL event takes no
token of the worker-wide limits, being exempt), so every decision is the one the read order gives.
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
