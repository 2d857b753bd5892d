"""One batch of records as one transaction: outputs and users' states, then offsets.

Each user's state is read once per batch and changed in memory by every record of the batch in order.
At the end (``commit``) the outputs, the changed states' changelog records and each partition's
``READ_UPTO`` mark (the last events offset the batch read there) are committed to Kafka
(one transaction per input partition with exactly-once, ``streams.outbox``; otherwise the outputs are
flushed first, then the changelog), only then are the states written to RocksDB, and only after that may
Faust commit the records' offsets. A crash at any point therefore loses nothing: a state that survived has its outputs in Kafka
(so the policy may ignore a record read again, its offset not above the state's ``upto``), and a record
whose state was lost is decided again the same way, on its own timestamp.

An outcome is encoded before its state is kept (``apply``): if encoding fails, nothing of it is kept.

A user's state as read from the table is handed to the policy to change in place (``owned``), which
spares a copy of it, but only for the user's first change in the batch: if the policy or the encoding
then fails (``spoilt``), the state is simply read from the table again. A later change of the same user
in the batch works on a copy, since the batch's state then holds changes the table does not.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Container

from agents import policy
from streams.outbox import Outbox
from streams.outputs import Outputs
from streams.states import READ_UPTO, UserStates

Reindex = Callable[[str, int, Any], None]  # (user id, partition, new state): when the user next needs the clock


class Step:
    def __init__(self, states: UserStates, outputs: Outputs, outbox: Outbox, reindex: Reindex,
                 holding: bool = False) -> None:
        self._states = states
        self._outputs = outputs
        self._outbox = outbox
        self._reindex = reindex
        self._current: dict[str, Any] = {}  # user -> state (None: none)
        self._home: dict[str, int] = {}  # users changed in this batch -> their partition
        self._stored: set[str] = set()  # users read with a state in the table
        self._fresh: set[str] = set()  # users whose batch state is still the table's, unchanged
        self.read_upto: dict[int, int] = {}  # partition -> the last events offset read in this batch
        self.released = 0  # users the clock released in this batch
        self.expressed = 0  # delivery requests sent at once (``apply``'s ``express``)
        self.between: Callable[[], None] = lambda: None  # called between long runs of work (``streams.express``)
        # whether the CRITICAL lane waits for a tick of this partition, which should then stop releasing
        self.yields: Callable[[int], bool] = lambda partition: False
        self.continued: set[int] = set()  # partitions whose releases this batch queued a tick to continue
        self.events: Counter = Counter()  # partition -> event records read (for the metrics)
        self.decisions: Counter = Counter()  # (outcome, final) -> decisions written
        self.requests: Counter = Counter()  # (channel, kind) -> delivery requests written
        # ``holding``: a step begun while the previous batch commits, its transactions' records kept here until
        # ``begin`` (a transactional producer takes no records for its next transaction while it commits)
        self._held: list[tuple[str, bytes | None, bytes, int]] | None = [] if holding else None

    def begin(self) -> None:
        """Queue the records a ``holding`` step kept (now that the previous batch is committed)."""
        held, self._held = self._held or [], None
        for topic, key, value, partition in held:
            self._outbox.send(topic, key, value, source=partition)

    @property
    def users(self) -> Container[str]:
        """The users this step has read or changed."""
        return self._current.keys()

    def state(self, user_id: str, partition: int) -> dict | None:
        """The user's state as this batch has it so far."""
        if user_id not in self._current:
            state = self._current[user_id] = self._states.get(user_id, partition)
            if state is not None:
                self._stored.add(user_id)
                self._fresh.add(user_id)
        return self._current[user_id]

    def owned(self, user_id: str) -> bool:
        """Whether the policy may change the user's ``state`` in place (its ``owned``): it is the table's, read
        in this batch and unchanged, so a failure can read it again. After such a call, ``apply`` the outcome or
        report the failure (``spoilt``)."""
        return user_id in self._fresh

    def spoilt(self, user_id: str) -> None:
        """Deciding for the user failed: a state the policy may have changed in place is read again from the
        table at its next use (a state changed earlier in the batch was copied, so it stands)."""
        if user_id in self._fresh:
            self._fresh.discard(user_id)
            self._stored.discard(user_id)
            del self._current[user_id]

    def apply(self, user_id: str, partition: int, out: policy.Outcome, express: bool = False) -> None:
        """Keep ``out.state`` as the user's state and queue the outcome's records (encoded first: an outcome
        that cannot be encoded raises and changes nothing). ``express``: its delivery requests are sent at
        once, outside the batch's transaction (``Outbox.express``); its decisions and state stay in it."""
        try:
            records = self._outputs.encode(out)
        except BaseException:
            self.spoilt(user_id)
            raise
        self._fresh.discard(user_id)
        self._current[user_id] = out.state
        self._home[user_id] = partition
        self._reindex(user_id, partition, out.state)
        requests = len(out.requests) if express else 0  # ``Outputs.encode`` puts the requests first
        for topic, key, value in records[:requests]:
            self._outbox.express(topic, key, value)
        for topic, key, value in records[requests:]:
            if self._held is not None:
                self._held.append((topic, key, value, partition))
            else:
                self._outbox.send(topic, key, value, source=partition)
        self.expressed += requests
        for decision in out.decisions:
            self.decisions[decision["outcome"], decision["final"]] += 1
        for request in out.requests:
            self.requests[request["channel"], request["kind"]] += 1

    async def commit(self) -> None:
        """Outputs and states' changelog committed by Kafka (one transaction per partition with exactly-once;
        otherwise outputs flushed first), then the states in RocksDB; raises if anything cannot be written,
        in which case the batch's records must not be committed."""
        if not self._outbox.exactly_once:
            await self._outbox.flush()
        changes: list[tuple[str, Any, int]] = []
        for user_id, partition in self._home.items():
            state = self._current[user_id]
            if state is not None and not policy.is_empty(state):
                changes.append((user_id, state, partition))
            elif user_id in self._stored:
                changes.append((user_id, None, partition))
        changes += [(READ_UPTO, {"read_upto": offset}, partition) for partition, offset in self.read_upto.items()]
        self._states.write(changes)
        self._home.clear()
        await self._outbox.commit()
        self._states.apply()
        self._states.persist_offsets()
