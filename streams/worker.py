"""The worker: a Faust app whose agents are a thin shell around the policy in ``agents/``.

Nothing here decides anything. ``create_worker`` assembles the named parts, each in its own module:

- ``Feed`` (``streams.feed``): the events and ticks in batches, for the partitions Faust's group gives the worker;
- ``Intake`` (``streams.intake``): decode, validate, dead-letter, move misrouted records home;
- ``Step`` (``streams.step``): one batch of records as one transaction (outputs, then states, then offsets);
- ``Clock`` (``streams.clock``): who is due when, and releasing them on ticks;
- ``UserStates`` and ``UserContext`` (``streams.states``, ``streams.context``): the tables the policy reads;
- ``Outputs`` (``streams.outputs``): the outcome's records, encoded before anything is kept;
- ``Watcher`` and ``Lane`` (``streams.express``, ``agents.lane``): CRITICAL events decided as they arrive,
  between the records of the batch in flight, their delivery requests sent at once.

A task runs the feed, whose batches ``Pipeline.batch`` decides; the agents ``preferences`` and ``presence``
keep those tables from their topics; a timer puts the ticks. A record that fails on its own is
dead-lettered with its reason and the stream goes on. A failure of a batch as a whole (its outputs or
states cannot be written) stops the process instead, before its offsets are committed; a supervisor
(``herald up``) restarts the worker, which reads the records again from the last commit.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Sequence

import faust
from confluent_kafka import KafkaException

from agents import clock as rules
from agents import policy
from agents.lane import Lane
from agents.order import Ahead, Item, overtaking
from agents.preferences import validate as validate_preferences
from agents.presence import expiry
from agents.validate import to_ms, validate_event
from herald.kafka import home_partition
from herald.settings import Settings
from herald.topics import ticks_topic
from schemas.codec import Codec
from schemas.registry import Registry
from streams import faust_adapter
from streams.app import create_app
from streams.clock import Clock, due_time
from streams.config import policy_config
from streams.context import UserContext
from streams.express import Watcher
from streams.feed import Feed, Record, held
from streams.intake import Intake, moved_from
from streams.metrics import WorkerMetrics
from streams.outbox import Outbox
from streams.outputs import Outputs
from streams.states import UserStates
from streams.step import Step
from streams.sticky import keep_assignment

log = logging.getLogger("herald.worker")
TICK: dict = {}  # what ``Pipeline.read`` returns for a tick: the clock's, not an event
EXIT_UNWRITTEN = 70  # the process's exit status when a batch's outputs or states could not be written
EXPRESS_POLL_S = 0.002  # while a batch commits, how often the CRITICAL lane looks for events read since


def record_time_ms(msg: Any) -> int:
    """The decision clock of a record: its own timestamp (see ``agents.clock.decision_time``)."""
    ts = msg.timestamp
    return rules.decision_time(int(round(ts * 1000)) if ts and ts > 0 else None, int(time.time() * 1000))


def _tick_bound(msg: Any) -> int:
    """The latest clock a tick record can release at: its own time (``agents.clock.tick_time`` never goes
    past the record's decision time, which never goes past its timestamp); without one, any time at all."""
    ts = msg.timestamp
    return int(round(ts * 1000)) if ts and ts > 0 else 2 ** 62


def _order_item(msg: Any, event: dict | None) -> Item:
    """What ``agents.order`` needs of a record read."""
    if event is TICK:
        return msg.partition, None, None
    return None if event is None else (msg.partition, event["user_id"], event["priority"])


class Pipeline:
    """The worker's parts, and what its agents do with each record."""

    def __init__(self, app: faust.App, settings: Settings, codec: Codec,
                 fatal: Callable[[int], Any] = os._exit) -> None:
        self.settings = settings
        self.codec = codec
        self.fatal = fatal
        self.events_topic = settings.topic("events")
        self.outbox = Outbox(settings, linger_ms=settings.producer_linger_ms,
                             transactional_id=settings.app_id if settings.exactly_once else None)
        self.states = UserStates(app, settings, self.outbox)
        self.context = UserContext(app, settings)
        self.config = policy_config(settings)
        self.outputs = Outputs(codec, settings)
        self.metrics = WorkerMetrics()
        self.intake = Intake(codec, self.outbox, settings.topic("dlq"), settings.partitions,
                             on_dead_letter=lambda reason, stage: self.metrics.dead_letters.labels(reason, stage).inc(),
                             batch_topics=(self.events_topic, ticks_topic(settings)))
        self.feed = Feed(settings, (self.events_topic, ticks_topic(settings)), lambda: bool(app.rebalancing))
        self.clock = Clock(self.feed, self.states, self.context, self.config, self.outbox, self.events_topic,
                           ticks_topic(settings), settings.release_chunk)
        self._read_upto: dict[int, int | None] = {}  # partition -> its READ_UPTO: as read at assignment, then as written
        self.watcher = Watcher(settings, self.events_topic, codec) if settings.critical_express else None
        if self.watcher is not None:
            self.outbox.defer(self.outputs.requests.values())
        self.lane = Lane()
        self._ticking: Counter = Counter()  # partitions with ticks of the batch in flight still to decide
        self._tick_until: dict[int, int] = {}  # partition -> the latest clock its ticks in the batch may release at
        self._early: Step | None = None  # the next batch's step, begun by the lane while a batch commits
        self.metrics.watch(self.clock.lag, self.clock.due, Path(app.conf.datadir))
        self.metrics.watch_recovery(lambda: faust_adapter.table_recovery(app))

    def register_outputs(self) -> None:
        """Register every output subject now, so that encoding never asks the registry mid-batch."""
        self.outputs.codec.registry.register_all(self.outputs.subjects())

    async def forget(self, *args: object, **kwargs: object) -> None:
        """At every rebalance: what is cached is only right for partitions this worker keeps owning."""
        self.context.forget()
        self.clock.forget()
        self._read_upto.clear()
        self._early = None  # what the lane decided into it is decided again by the partitions' next owner
        self.lane.reset()
        self.states.forget()
        self.metrics.rebalances.inc()

    async def fence(self, assigned: Iterable[Any]) -> None:
        """At an assignment, before the tables restore (``faust_adapter.guard_table_recovery``): open the
        transactional producers of the partitions now ours, fencing their previous owners, and close the
        others' (exactly-once; see ``streams.outbox``). Once it returns, a previous owner's last transaction
        is committed, markers written, or aborted, so the restore reads every state change it committed.
        The partition numbers are those Faust's group gave this worker on the preferences topic,
        co-partitioned with the events (``streams.feed``)."""
        partitions = held(assigned, self.settings.topic("preferences"))
        await asyncio.get_running_loop().run_in_executor(None, self.outbox.claim, partitions)

    async def assigned(self, *args: Any, **kwargs: Any) -> None:
        """At an assignment (after ``fence``, with the tables' restore under way): forget what is cached, then
        read the partitions' events and ticks (the feed waits for the restore, ``Feed.ready``)."""
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", ())  # (sender, assigned)
        partitions = held(assigned, self.settings.topic("preferences"))
        await self.forget()
        self.feed.assign(partitions)
        if self.watcher is not None:
            self.watcher.assign(partitions)

    async def revoked(self, *args: Any, **kwargs: Any) -> None:
        """At a revocation: once the batch in flight is written, stop reading, and forget what is cached."""
        await self.feed.revoke()
        if self.watcher is not None:
            self.watcher.revoke()
        await self.forget()

    async def batch(self, events: Sequence[Record]) -> None:
        """Read every record of the batch, decide on them in ``agents.order``'s order (the read order, but
        for CRITICAL events that overtake), then commit the batch as one transaction. With the CRITICAL lane
        (``streams.express``) the overtaking events' delivery requests are sent at once, and between the
        records read and decided the CRITICAL events read since are decided as ``agents.lane`` allows; a
        partition's ticks that hold one of those back are decided at once, ahead of their place."""
        started = time.perf_counter()
        step, self._early = self._early or Step(self.states, self.outputs, self.outbox, self.clock.reindex), None
        step.begin()
        lane = self.watcher is not None
        if lane:
            ticks = [e.message for e in events if e.message.topic != self.events_topic]
            self._ticking = Counter(msg.partition for msg in ticks)
            self._tick_until = {}
            for msg in ticks:
                self._tick_until[msg.partition] = max(self._tick_until.get(msg.partition, 0), _tick_bound(msg))
            step.between = lambda: self.express(step)
            step.yields = self._lane_waits_for
            self.express(step)
        await self.intake.prepare([e.message.value for e in events if e.message.topic == self.events_topic])
        read = []
        for event in events:
            read.append(await self.read(step, event))
            if lane:
                step.between()
        items = [_order_item(event.message, what) for event, (_, what) in zip(events, read)]
        first, rest = overtaking(items)
        for i in first:
            self.decide(step, events[i].message, *read[i], express=lane)
        self._decide_rest(step, events, read, items, rest, lane)
        if lane:
            for event in events:
                if event.message.topic == self.events_topic:
                    self.lane.taken(event.message.partition, event.message.offset)
            step.between, step.yields = lambda: None, lambda partition: False
            await self._commit_expressing(step)
        else:
            await step.commit()
        self.note_written(step)
        self.metrics.batch(len(events), time.perf_counter() - started, step.events, step.decisions, step.requests,
                           step.released, step.expressed)

    def _decide_rest(self, step: Step, events: Sequence[Record], read: list[tuple[int, dict | None]],
                     items: list[Item], rest: list[int], lane: bool) -> None:
        """Decide the batch's records at positions ``rest`` in that order, the lane going on after each; a
        partition's ticks that hold back a CRITICAL event of the lane are decided at once, ahead of their place
        (``agents.order``'s ``Ahead``)."""
        ahead = Ahead(items, rest)
        for i in rest:
            if ahead.skip(i):
                continue
            self._decide_one(step, events[i].message, read[i], lane)
            if lane and self.lane.waiting:
                for partition in sorted(p for p in ahead.pending() if self._lane_waits_for(p)):
                    for j in ahead.pull(partition):
                        self._decide_one(step, events[j].message, read[j], lane)

    def _lane_waits_for(self, partition: int) -> bool:
        """Whether a CRITICAL event of the lane waits for a tick of ``partition`` (at the lane's last look)."""
        return bool(self.lane.waiting) and partition in self.lane.tick_held

    def _decide_one(self, step: Step, msg: Any, read: tuple[int, dict | None], lane: bool) -> None:
        self.decide(step, msg, *read)
        if lane:
            if msg.topic != self.events_topic:  # a tick decided no longer holds its partition's lane back
                self._ticking[msg.partition] -= 1
            step.between()

    async def _commit_expressing(self, step: Step) -> None:
        """Commit ``step``; while its transactions commit, the CRITICAL events read since go ahead as they would
        between records, into the next batch's step (begun now, its other records held until it ``begin``s),
        except those of users ``step`` read or changed. Any failure fails the batch."""
        committing = asyncio.ensure_future(step.commit())
        try:
            while not committing.done():
                await asyncio.wait((committing,), timeout=EXPRESS_POLL_S)
                if not committing.done() and self.watcher is not None and (self.watcher.inbox or self.lane.waiting):
                    if self._early is None:
                        self._early = Step(self.states, self.outputs, self.outbox, self.clock.reindex, holding=True)
                    self.express(self._early, busy=step.users)
        except BaseException:
            committing.cancel()
            raise
        await committing

    async def lane_when_idle(self) -> None:
        """Decide the CRITICAL events the lane's reader reads while no batch is in flight, as they arrive. A batch
        takes the lane in between its records and while it commits; between batches nothing else would until the
        pipeline's next fetch returns, which waits for ``HERALD_FETCH_MIN_BYTES`` to gather. They go into the next
        batch's step (begun now, holding its records, as while a batch commits); their delivery requests are sent
        at once. Nothing is decided while the tables restore or the group rebalances (``Feed.ready``). With the
        default ``HERALD_FETCH_MIN_BYTES`` (1) the next fetch returns with the event itself, and this only races it."""
        watcher = self.watcher
        if watcher is None:
            return
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        watcher.on_critical = lambda: loop.call_soon_threadsafe(wake.set)
        try:
            while True:
                await wake.wait()
                wake.clear()
                async with self.feed.between_batches():  # a batch in flight takes them itself; this waits it out
                    if not self.feed.ready() or not (watcher.inbox or self.lane.waiting):
                        continue
                    if self._early is None:
                        self._early = Step(self.states, self.outputs, self.outbox, self.clock.reindex, holding=True)
                    try:
                        self.express(self._early)
                    except BaseException:  # noqa: BLE001 - as a batch that fails: stop, the records are read again
                        log.critical("the CRITICAL lane failed between batches; stopping so that its records are read "
                                     "again", exc_info=True)
                        self.fatal(EXIT_UNWRITTEN)
                        raise
        finally:
            watcher.on_critical = None

    def express(self, step: Step, busy: Container[str] = frozenset()) -> None:
        """Take in what the CRITICAL lane's reader has read since, and decide the CRITICAL events that may go
        ahead now (``agents.lane``), their delivery requests sent at once. One that does not validate, is not
        on its user's home partition, fails, or whose decision would make its user due for a tick of the batch
        still to decide, is left for the pipeline to read the usual way."""
        watcher = self.watcher
        if watcher is None:
            return
        inbox, lane, epoch = watcher.inbox, self.lane, watcher.epoch
        if not inbox and not lane.waiting:
            return
        while inbox:
            seen_in, partition, offset, user_id, candidate, after_gap = inbox.popleft()
            if seen_in != epoch:
                continue
            if candidate is not None and candidate.event is None:  # kept, in case it must go ahead with a CRITICAL one
                lane.seen(partition, offset, user_id, None, after_gap, record=candidate)
            else:
                lane.seen(partition, offset, user_id, candidate, after_gap)
        ticking = {p: self._tick_until[p] for p, n in self._ticking.items() if n > 0}
        for partition, offset, user_id, (msg, event, read_at), until, earlier in lane.ready(ticking, self.clock.due_of,
                                                                                          busy):
            if earlier and not self._ahead(step, partition, user_id, earlier, until):
                continue
            if self._go_ahead(step, partition, offset, user_id, msg, event, until, express=True):
                self.metrics.critical_wait.observe(time.monotonic() - read_at)

    def _ahead(self, step: Step, partition: int, user_id: str, earlier: list, until: int | None) -> bool:
        """Decide, in order, the user's records before its CRITICAL event that the pipeline has not decided yet
        (``agents.lane``'s ``earlier``), so that the event can go ahead of the pipeline in its user's order; their
        outputs go with the batch, as the pipeline's would. False at the first that is not decided here (it does
        not decode or validate, is not on its user's home partition, or fails): it is left to the pipeline, and
        so is the CRITICAL event."""
        for offset, (msg, _, _) in earlier:
            schema_id = self.codec.schema_id_of(msg.value)
            if schema_id is None or not self.codec.registry.cached(schema_id):
                return False  # its schema would be asked of the registry, which the loop must not wait for
            try:
                event = self.codec.decode(msg.value, "NotificationEvent")
            except Exception:  # noqa: BLE001 - the pipeline judges it when it reads it (and dead-letters it)
                return False
            if event.get("user_id") != user_id or not self._go_ahead(step, partition, offset, user_id, msg, event,
                                                                      until, express=False):
                return False
        return True

    def _go_ahead(self, step: Step, partition: int, offset: int, user_id: str, msg: Any, event: dict,
                  until: int | None, express: bool) -> bool:
        """Decide one record the lane hands over, ahead of the pipeline (``express``: its delivery requests are sent
        at once), and tell the lane; False, changing nothing, when it does not validate, is not on its user's home
        partition, would make its user due for a tick still to decide (``until``), or fails: the pipeline decides
        it when it reads it (and dead-letters it if it must)."""
        now_ms = record_time_ms(msg)
        try:
            validate_event(event, msg.key, now_ms)
        except Exception:  # noqa: BLE001 - a ValidationError, or a bug the pipeline dead-letters the record for
            return False
        if msg.headers or home_partition(msg.key or b"", self.settings.partitions) != partition:
            return False
        try:
            if not self._decide_event(step, msg, now_ms, event, express=express, until=until):
                return False
        except KafkaException:
            raise  # an output could not be queued: the batch fails as a whole, its records are read again
        except Exception:  # noqa: BLE001 - the pipeline decides it again when it reads it
            step.spoilt(user_id)
            log.warning("deciding %s:%s@%s ahead failed; it is decided when read", msg.topic, partition, offset,
                        exc_info=True)
            return False
        self.lane.decided(partition, offset, user_id)
        return True

    async def read(self, step: Step, event: Any) -> tuple[int, dict | None]:
        """A record's decision clock and its validated event (None: dead-lettered, moved home or skipped; ``TICK``:
        a tick). Skipped: a record of a batch already written (``written_before``), or one at or below the offset
        this batch already read on its partition (records come in offset order, so it was read in this batch: a
        consumer that seeks back to the committed offsets, as Faust's did after a recovery, can hand over again,
        in the same batch, records it had fetched before the seek)."""
        msg = event.message
        now_ms = record_time_ms(msg)
        if msg.topic != self.events_topic:
            return now_ms, TICK
        self.clock.note_event(msg.partition, msg.offset, now_ms)
        step.events[msg.partition] += 1
        if self.written_before(msg.partition, msg.offset) or msg.offset <= step.read_upto.get(msg.partition, -1):
            return now_ms, None  # handled by a batch already written, or earlier in this one
        step.read_upto[msg.partition] = msg.offset
        try:
            return now_ms, await self.intake.event(msg, now_ms)
        except KafkaException:
            raise  # a dead letter could not be queued: the batch fails as a whole, its records are read again
        except Exception as exc:  # noqa: BLE001 - a bug on one record must not stop the stream; it is kept
            log.exception("failed on %s:%s@%s", msg.topic, msg.partition, msg.offset)
            self.intake.dead_letter(msg, "INTERNAL", f"{type(exc).__name__}: {exc}", "pipeline")
            return now_ms, None

    def written_before(self, partition: int, offset: int) -> bool:
        """Whether the events record at ``offset`` of ``partition`` was handled by a batch already written (its
        offset at or below the partition's ``READ_UPTO``): read again after a crash or a rebalance, before
        Faust committed its offset. Such a record is skipped: decided, dead-lettered or moved once only."""
        if partition not in self._read_upto:
            upto = self._read_upto[partition] = self.states.read_upto(partition)
            if upto is not None:
                log.info("partition %d: records up to offset %d were written before; any read again are skipped",
                         partition, upto)
        upto = self._read_upto[partition]
        return upto is not None and offset <= upto

    def note_written(self, step: Step) -> None:
        """After a batch's commit: its ``READ_UPTO`` marks are this worker's too, so a record the fetch hands
        over again within this process is skipped like one read again after a restart (the x10 chaos run
        found bad records dead-lettered twice, 0.01-1.5 s apart, by one worker with no rebalance between).
        A partition a rebalance cleared meanwhile is read from RocksDB again at its next record."""
        for partition, offset in step.read_upto.items():
            if partition in self._read_upto:
                self._read_upto[partition] = max(offset, self._read_upto[partition] or -1)

    def decide(self, step: Step, msg: Any, now_ms: int, event: dict | None, express: bool = False) -> None:
        """Release the partition's due users for a tick; decide on a validated event (``express``: its
        delivery requests are sent at once)."""
        if event is TICK:
            self.clock.release(step, msg.partition, now_ms)
            return
        if event is None:
            return
        try:
            self._decide_event(step, msg, now_ms, event, express)
        except KafkaException:
            raise  # an output could not be queued: the batch fails as a whole, its records are read again
        except Exception as exc:  # noqa: BLE001 - a bug on one record must not stop the stream; it is kept
            step.spoilt(event["user_id"])
            log.exception("failed on %s:%s@%s", msg.topic, msg.partition, msg.offset)
            self.intake.dead_letter(msg, "INTERNAL", f"{type(exc).__name__}: {exc}", "pipeline")

    def _decide_event(self, step: Step, msg: Any, now_ms: int, event: dict, express: bool,
                      until: int | None = None) -> bool:
        """Decide on an event and keep the outcome; True when kept. ``until`` (the CRITICAL lane, ahead of a
        tick still to decide): the outcome is kept only if it leaves the user due after ``until``, or not at
        all; otherwise nothing changes (the state is not changed in place) and False is returned."""
        user_id = event["user_id"]
        prefs, online = self.context.of(user_id, msg.partition, now_ms)
        state = step.state(user_id, msg.partition)
        out = policy.on_event(state, event, prefs, online, now_ms, f"{msg.topic}:{msg.partition}:{msg.offset}",
                              self.config, offset=msg.offset, owned=until is None and step.owned(user_id),
                              moved_from=moved_from(msg.headers) if msg.headers else None)
        if until is not None and (due := due_time(out.state)) is not None and due <= until:
            return False
        step.apply(user_id, msg.partition, out, express)
        return True

    async def preferences(self, msg: Any) -> None:
        """A preferences record: validated, then stored; a bad one is dead-lettered and the previous kept."""
        user_id = (msg.key or b"").decode("utf-8", errors="replace")
        if not user_id:
            self.intake.dead_letter(msg, "VALIDATION", "a preferences record needs the user_id as its key", "preferences")
        elif self.intake.misrouted(msg, msg.key):
            pass
        elif msg.value is None:
            self.context.set_preferences(user_id, None)  # a tombstone resets to the defaults
        else:
            record = await self.intake.decode(msg, "Preferences", "preferences")
            problems = validate_preferences(record, ignore_unknown=True) if record is not None else []
            if problems:
                self.intake.dead_letter(msg, "VALIDATION", "; ".join(problems), "preferences")
            elif record is not None:
                record["updated_at"] = to_ms(record.get("updated_at") or 0)
                self.context.set_preferences(user_id, record)
        await self.outbox.flush()

    async def presence(self, msg: Any) -> None:
        """A connect or disconnect; an online entry is trusted for the presence TTL at most."""
        if msg.key is None or msg.value is None:
            return
        if not self.intake.misrouted(msg, msg.key):
            record = await self.intake.decode(msg, "Presence", "presence")
            if record is not None and record["online"]:
                until = expiry(to_ms(record["expires_at"]), record_time_ms(msg), self.settings.presence_ttl_s)
                self.context.set_presence(record["user_id"], {"online": True, "expires_at": until,
                                                              "connection_id": record["connection_id"]})
            elif record is not None:
                self.context.set_presence(record["user_id"], None)
        await self.outbox.flush()

    async def guarded(self, what: str, work: Any) -> None:
        """Await ``work``; if it raises, stop the process rather than let Faust ack what was not done."""
        try:
            await work
        except asyncio.CancelledError:
            # Faust cancels an agent to stop it, then acks the record it was handed and commits it: what this
            # work had not written yet would be lost. Stop now, before that commit. (The feed commits a batch's
            # offsets only after the batch, so for it stopping here only makes the stop quicker.)
            log.warning("%s was cancelled before it was written; stopping so that its records are read again", what)
            self.fatal(EXIT_UNWRITTEN)
            raise
        except BaseException:  # noqa: BLE001
            log.critical("%s failed; stopping so that its records are read again, not committed unprocessed",
                         what, exc_info=True)
            self.fatal(EXIT_UNWRITTEN)
            raise


def create_worker(settings: Settings | None = None, register: bool = True) -> faust.App:
    """The worker's Faust app with its agents; ``register`` the output schemas first (needs the registry)."""
    settings = settings or Settings.from_env()
    codec = Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
    app = create_app(settings)
    keep_assignment(app, Path(app.conf.datadir))  # a restarted worker asks for its partitions (and states) back
    if settings.exactly_once:
        faust_adapter.recover_past_transaction_markers(app)
    pipeline = Pipeline(app, settings, codec)
    if register:
        pipeline.register_outputs()
    app.on_partitions_revoked.connect(pipeline.revoked)
    faust_adapter.guard_table_recovery(app, pipeline.fence)
    app.on_partitions_assigned.connect(pipeline.assigned)
    _agents(app, settings, pipeline)
    app.herald_pipeline = pipeline  # type: ignore[attr-defined]
    return app


def _raw_topic(app: faust.App, *names: str) -> Any:
    """Topics read as raw bytes: Herald's codec decodes them, so a bad record is dead-lettered, not raised."""
    return app.topic(*names, key_type=bytes, value_type=bytes)


def _agents(app: faust.App, settings: Settings, pipeline: Pipeline) -> None:
    ticks = _raw_topic(app, ticks_topic(settings))
    events = _raw_topic(app, settings.topic("events"))

    @app.task
    async def decide() -> None:
        for topic in (events, ticks):
            await topic.maybe_declare()  # the feed reads them: Faust declares only the topics its agents read
        idle_lane = asyncio.ensure_future(pipeline.lane_when_idle())
        if pipeline.watcher is not None:
            pipeline.watcher.start()
        try:
            await pipeline.feed.run(lambda batch: pipeline.guarded("a batch of events", pipeline.batch(batch)))
        finally:
            idle_lane.cancel()
            if pipeline.watcher is not None:
                pipeline.watcher.stop()

    @app.agent(_raw_topic(app, settings.topic("preferences")), concurrency=1, name="preferences")
    async def preferences(stream: Any) -> None:
        async for event in stream.events():
            await pipeline.guarded("a preferences record", pipeline.preferences(event.message))

    @app.agent(_raw_topic(app, settings.topic("presence")), concurrency=1, name="presence")
    async def presence(stream: Any) -> None:
        async for event in stream.events():
            await pipeline.guarded("a presence record", pipeline.presence(event.message))

    @app.timer(interval=settings.tick_interval_s)
    async def tick() -> None:
        for partition in range(settings.partitions):
            await ticks.send(key=b"tick", value=b"", partition=partition)
