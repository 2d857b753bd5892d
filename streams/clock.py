"""The clock: releasing held events, closed batches and digests when they fall due.

A timer puts a tick on every partition of an internal topic co-partitioned with the events; the
pipeline, reading it among that partition's events (``streams.feed``), releases the users due there, in
order with the events (``on_window_close`` is not to be trusted). Who is due when
is an in-memory index per partition (``DueIndex``), derived from the users' states and rebuilt from the
states table after every rebalance, so no crash leaves it out of step with them.

The rebuild reads every user's state of the partitions held (half a million users take seconds), so
inside the worker's event loop it goes in chunks of ``INDEX_CHUNK`` users, yielding between them: the
first events after a restart or a rebalance are decided while it runs, and the clock releases the users
indexed so far (the others at a tick after they are). A user whose state changes meanwhile is indexed
from that change, never again from the older state the rebuild reads; one the index names too early is
harmless, since a release checks the user's own state first.

Rules (pure, in ``agents.clock``): a partition's clock never runs ahead of the events still waiting to be
read on it; a batch of records releases at most ``HERALD_RELEASE_CHUNK`` users, a tenth of that while the
partition is live, and queues one tick (per partition and batch) to continue after the records already
waiting, so an event arriving behind a million due digests waits for a few hundred releases, not all of
them; a release also stops short, and queues that tick, when the CRITICAL lane waits for it (``release``). A
user whose release fails (a bug, or data the policy cannot handle) is logged and tried again
later; the others go on.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Iterator

from agents import clock as rules
from agents import policy
from streams import memory
from streams.context import UserContext
from streams.due import DueIndex
from streams.feed import Feed
from streams.outbox import Outbox
from streams.states import UserStates
from streams.step import Step

log = logging.getLogger("herald.clock")
BEHIND = 1_000  # records still unread on a partition that make its clock wait for them
LIVE_S = 1.0  # a partition with an event read this recently is live: its releases go in small chunks
RETRY_MS = 60_000  # a user whose release failed is tried again this much later
INDEX_CHUNK = 2_000  # users a rebuild indexes before it lets the event loop run the rest of the worker
BETWEEN = 32  # users a release takes out and releases between two looks of the CRITICAL lane


def due_time(state: Any) -> int | None:
    """When a user with ``state`` next needs the clock (None: never), as the index keeps it."""
    return None if state is None or policy.is_empty(state) else policy.next_due(state)


class Clock:
    def __init__(self, feed: Feed, states: UserStates, context: UserContext, config: policy.PolicyConfig,
                 outbox: Outbox, events_topic: str, ticks_topic: str, release_chunk: int) -> None:
        self._feed = feed  # ``streams.feed.Feed``: the partitions held, and how far each goes
        self._states = states
        self._context = context
        self._config = config
        self._outbox = outbox
        self._events_topic = events_topic
        self._ticks_topic = ticks_topic
        self._release_chunk = release_chunk
        self._indexes: dict[int, DueIndex] = {}
        self._last_event: dict[int, tuple[int, int]] = {}  # partition -> (offset, time) of its last event read
        self._last_read: dict[int, float] = {}  # partition -> when (monotonic) its last event was read
        # partition -> (its states still to index, users indexed from a change since the rebuild began)
        self._building: dict[int, tuple[Iterator[tuple[str, dict]], set[str]]] = {}
        self._builder: asyncio.Task | None = None
        self._failed: BaseException | None = None  # why the last rebuild stopped, raised at the index's next use

    def note_event(self, partition: int, offset: int, now_ms: int) -> None:
        self._last_event[partition] = (offset, now_ms)
        self._last_read[partition] = time.monotonic()

    def reindex(self, user_id: str, partition: int, state: dict) -> None:
        """Index ``user_id`` by when ``state`` next needs the clock."""
        index = self.index(partition)
        building = self._building.get(partition)
        if building is not None:
            building[1].add(user_id)  # the rebuild, reading older states, leaves this user as set here
        index.set(user_id, due_time(state))

    def due_of(self, user_id: str, partition: int) -> int | None:
        """When ``user_id`` is due on ``partition`` as the index has it (None: not indexed)."""
        return self.index(partition).due(user_id)

    def index(self, partition: int) -> DueIndex:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise RuntimeError("indexing the users' states failed; the clock cannot know who is due") from failed
        if partition not in self._indexes:
            self._rebuild(partition)
        return self._indexes[partition]

    def indexing(self) -> bool:
        """Whether a rebuild is still reading states."""
        return bool(self._building)

    def _rebuild(self, partition: int) -> None:
        """Index every user of the partitions held but not indexed yet, straight from their RocksDB files: in
        chunks within a running event loop (``_build``), else at once."""
        fresh = (self._feed.partitions | {partition}) - set(self._indexes)
        for p in fresh:
            self._indexes[p] = DueIndex()
            self._building[p] = (iter(self._states.scan(p)), set())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._index_all(sorted(fresh))
        elif self._builder is None or self._builder.done():
            self._builder = loop.create_task(self._build(), name="herald.clock.index")
            self._builder.add_done_callback(self._built)

    def _built(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed = task.exception()
            log.error("indexing the users' states failed: %r; the next batch stops on it", self._failed)

    def _index_chunk(self, partition: int, limit: int | None) -> int:
        """Index up to ``limit`` (None: all) more users of ``partition``; the number indexed. The partition's
        scan is dropped once it is over."""
        scan, changed = self._building[partition]
        index = self._indexes[partition]
        count = taken = 0
        for user_id, state in itertools.islice(scan, limit):
            taken += 1
            if user_id in changed:
                continue
            due = policy.next_due(state)
            if due is not None:
                index.set(user_id, due)
                count += 1
        if limit is None or taken < limit:
            del self._building[partition]
        return count

    def _index_all(self, partitions: list[int]) -> None:
        started = time.monotonic()
        count = sum(self._index_chunk(p, None) for p in partitions)
        self._indexed(partitions, count, started)

    async def _build(self) -> None:
        """Index the partitions being rebuilt, a chunk at a time, until none is left (``forget`` cancels it
        at a rebalance); a partition asked for meanwhile joins it."""
        started, count, partitions = time.monotonic(), 0, set(self._building)
        while self._building:
            partition = min(self._building)
            partitions.add(partition)
            count += self._index_chunk(partition, INDEX_CHUNK)
            await asyncio.sleep(0)  # the batches, the lane and the timers run between chunks
        self._indexed(sorted(partitions), count, started)

    def _indexed(self, partitions: list[int], count: int, started: float) -> None:
        elapsed = time.monotonic() - started
        # what a restore left in memtables, written out to be given back below; a reopened disk's are empty
        # (RocksDB writes out the log it replays on open), and flushing them costs next to nothing
        self._states.flush(partitions)
        memory.trim(f"restoring and indexing partitions {partitions}")  # the scan's garbage, once per rebalance
        log.info("indexed %d users of partitions %s in %.2f s", count, partitions, elapsed)

    def unread(self, partition: int) -> int | None:
        """Events of ``partition`` not read yet (None: not known, before its first event or fetch)."""
        if partition not in self._last_event:
            return None
        highwater = self._feed.highwater(self._events_topic, partition)
        return None if highwater is None else max(0, highwater - 1 - self._last_event[partition][0])

    def lag(self) -> dict[int, int]:
        """Unread events per partition, where known."""
        return {p: n for p in list(self._last_event) if (n := self.unread(p)) is not None}

    def due(self) -> dict[int, int]:
        """Users indexed per partition."""
        return {p: len(index) for p, index in list(self._indexes.items())}

    def _live(self, partition: int) -> bool:
        """Whether an event of ``partition`` was read within ``LIVE_S``."""
        return time.monotonic() - self._last_read.get(partition, 0.0) < LIVE_S

    def tick_time(self, partition: int, tick_ms: int) -> int:
        return self._tick(partition, tick_ms)[0]

    def _tick(self, partition: int, tick_ms: int) -> tuple[int, bool]:
        """The tick's clock on ``partition`` (``agents.clock.tick_time``), and whether events are arriving
        there (some unread, or one read just now), which shrinks what one batch may release."""
        unread, live = self.unread(partition), self._live(partition)
        last = self._last_event.get(partition)
        now_ms = rules.tick_time(tick_ms, unread, last[1] if last else None, BEHIND, live=live)
        return now_ms, bool(unread) or live

    def release(self, step: Step, partition: int, tick_ms: int) -> None:
        """Release the users due on ``partition`` at the tick's clock, within this batch's budget, ``BETWEEN`` at a
        time with the CRITICAL lane's look between (``step.between``). It stops early when the lane waits for this
        partition's tick (``step.yields``): a CRITICAL event whose user the tick may release then goes next, and the
        users still due go at the tick queued to continue, as those past the budget do."""
        now_ms, busy = self._tick(partition, tick_ms)
        index = self.index(partition)
        budget = max(0, rules.release_limit(self._release_chunk, busy) - step.released)
        while budget:
            chunk = index.pop_due(now_ms, limit=min(budget, BETWEEN))
            budget -= len(chunk)
            step.released += len(chunk)
            for user_id in chunk:
                try:
                    self._release_one(step, user_id, partition, now_ms)
                except Exception:  # noqa: BLE001 - one user's failure must not strand the others popped with it
                    step.spoilt(user_id)
                    log.exception("a release on partition %d failed; that user is tried again in %d s",
                                  partition, RETRY_MS // 1000)
                    index.set(user_id, now_ms + RETRY_MS)
            if len(chunk) < BETWEEN:
                break  # none left due, or the budget is spent
            step.between()  # CRITICAL events read since may go ahead (``streams.express``)
            if step.yields(partition):
                break
        if partition not in step.continued and (index.next() or now_ms + 1) <= now_ms:
            # more are due: continue later, with one tick per partition and batch whatever the ticks read in it
            step.continued.add(partition)
            self._outbox.send(self._ticks_topic, b"tick", b"", partition, source=partition)

    def _release_one(self, step: Step, user_id: str, partition: int, now_ms: int) -> None:
        state = step.state(user_id, partition)
        when = policy.next_due(state) if state else None
        if when is None:
            return
        if when > now_ms:  # its due time moved
            self.index(partition).set(user_id, when)
            return
        prefs, online = self._context.of(user_id, partition, now_ms)
        step.apply(user_id, partition, policy.on_tick(state, prefs, online, now_ms, self._config, owned=step.owned(user_id)))

    def forget(self) -> None:
        """At a rebalance: rebuilt for the partitions held after it."""
        if self._builder is not None:
            self._builder.cancel()  # it waits between two chunks: nothing of it runs after this
            self._builder = None
        for cache in (self._indexes, self._last_event, self._last_read, self._building):
            cache.clear()
