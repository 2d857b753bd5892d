"""The Faust shell of the pipeline: read events, call the policy in ``agents/``, write what it decides.

Nothing here decides anything. The shell:
- takes records in batches (``take_events``): each user's state is read once per batch and changed
  by every record of the batch in order; the batch's outputs are flushed to Kafka (``Outbox``), then
  the states are written, then Faust acks the records and later commits their offsets. A crash
  therefore never loses an output, and a state that survived it has its outputs in Kafka: a record
  read again is ignored by the policy (its offset is not above the user's ``upto``), and a record
  whose state was lost is decided again the same way (below);
- decodes and validates each record before any state is touched; a record that fails goes to the
  dead-letter topic with its reason and the stream goes on;
- keeps every user's state on the partition their events are on (a record that a producer's
  partitioner put elsewhere is moved to ``murmur2(user_id)``, Kafka's default, first);
- decides on the record's own timestamp, not the wall clock, so a record read again after a crash is
  decided again the same way (same windows, same delivery ids, same decision times);
- runs the clock: a timer puts a tick on every partition of an internal topic co-partitioned with the
  events, and the agent, in stream context for that partition, releases the users due (Faust tables can
  only be written from a stream, and ``on_window_close`` is not to be trusted). Who is due when is an
  in-memory index (``DueIndex``) rebuilt from the states table after every rebalance. The clock of a
  partition never runs ahead of the events still waiting to be read on it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from functools import lru_cache
from pathlib import Path

import faust
import orjson
from aiokafka.partitioner import murmur2
from faust.streams import _current_event

from agents import policy
from agents.preferences import effective
from agents.rate_limit import GlobalLimiter, Limits
from agents.validate import ValidationError, to_ms, validate_event
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from herald import dlq
from streams.app import create_app
from streams.due import DueIndex, release_limit
from streams.mirror import Mirrored
from streams.outbox import Outbox
from herald.settings import Settings
from streams.sticky import keep_assignment
from streams.table_batch import TableBatch
from herald.topics import CHANNELS

log = logging.getLogger("herald.pipeline")
BEHIND = 1_000  # records still unread on a partition that make its clock wait for them
LIVE_S = 1.0  # a partition with an event read this recently is live: its releases go in small chunks
STATES_TABLE = "states"  # users' states: raw bytes (the JSON-typed "users" table of 0.1 is not read)
COMPACTED = {"segment.ms": str(10 * 60_000), "segment.bytes": str(64 * 1024 * 1024), "min.cleanable.dirty.ratio": "0.2"}


def policy_config(settings: Settings) -> policy.PolicyConfig:
    return policy.PolicyConfig(
        dedup_window_s=settings.dedup_window_s,
        dedup_window_by_type=settings.dedup_windows(),
        limits=Limits(settings.rate_per_minute, settings.rate_per_hour, settings.rate_per_day),
        batch_window_s=settings.batch_window_s or None,
        digest_period_s=settings.digest_period_s or None,
        global_limits={channel: GlobalLimiter(settings.global_rate_per_s, burst=max(1, int(settings.global_rate_per_s)))
                       for channel in policy.LIMITED} if settings.global_rate_per_s > 0 else {},
    )


@lru_cache(maxsize=65_536)
def home_partition(key: bytes, partitions: int) -> int:
    """Kafka's default (Java) partitioner: where a user's records belong."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def online(entry: dict | None, now_ms: int) -> bool:
    return bool(entry) and entry.get("online", False) and entry.get("expires_at", 0) > now_ms


def record_time_ms(message: faust.types.tuples.Message) -> int:
    """The record's timestamp in ms: the decision clock. The wall clock only for a record without one,
    or one from a producer whose clock is ahead (it must not release the future early)."""
    wall = int(time.time() * 1000)
    ts = message.timestamp
    if not ts or ts <= 0:
        return wall
    return min(int(round(ts * 1000)), wall)


def build(settings: Settings | None = None) -> faust.App:
    settings = settings or Settings.from_env()
    codec = Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
    app = create_app(settings, codec)
    keep_assignment(app, Path(app.conf.datadir))  # a restarted worker asks for its partitions (and states) back
    topics = app.herald_topics  # type: ignore[attr-defined]
    config = policy_config(settings)
    parts = settings.partitions
    events_topic = settings.topic("events")
    decisions_topic = settings.topic("decisions")
    decisions_value = f"{decisions_topic}-value"
    delivery_topics = {c: topics[f"delivery.{c.lower()}"].get_topic_name() for c in CHANNELS}
    ticks = app.topic(f"{settings.app_id}-ticks", key_type=bytes, value_type=bytes)
    # each batch logs every user it changed: roll segments often so compaction keeps the changelog (and a
    # new owner's recovery) near one record per user instead of one per event since the topic was created.
    # Raw bytes (JSON made and read here, with orjson): Faust would decode every record it restores only to
    # write the bytes back, which made a recovery three times slower.
    users_table = app.Table(STATES_TABLE, default=None, partitions=parts, extra_topic_configs=COMPACTED,
                            key_type=bytes, value_type=bytes, recovery_buffer_size=10_000)
    outbox = Outbox(settings.kafka_bootstrap, linger_ms=settings.producer_linger_ms)
    # the states' keys are raw: a user id's UTF-8 bytes, made without Faust's layers (3% of a digest's release)
    users_batch = TableBatch(users_table, outbox, encode=orjson.dumps, encode_key=str.encode)  # a batch at once
    # no read cache for the states: a RocksDB get is a few µs, and a cache of a few hundred thousand states
    # (dicts of dicts) made the garbage collector's full passes take ~0.5 s
    users = Mirrored(users_table, max_keys=0, writer=users_batch, decode=orjson.loads, encode_key=str.encode)
    # preferences and presence are written by this worker's own agents, through the same caches
    prefs_table = Mirrored(app.Table("preferences", default=None, partitions=parts))
    presence = Mirrored(app.Table("presence", default=None, partitions=parts))
    effective_prefs: dict[str, dict] = {}  # user -> preferences with the defaults filled in
    indexes: dict[int, DueIndex] = {}  # partition -> who is due when; rebuilt from the users after a rebalance
    last_event: dict[int, tuple[int, int]] = {}  # partition -> (offset, timestamp) of the last event read on it
    last_read: dict[int, float] = {}  # partition -> when (monotonic) its last event was read

    async def forget(app: faust.App, *args: object, **kwargs: object) -> None:  # noqa: ARG001
        """At every rebalance: the caches are only right for partitions this worker keeps owning."""
        for cache in (users, prefs_table, presence, effective_prefs, indexes, last_event, last_read):
            cache.clear()
        users_batch.forget()

    app.on_partitions_revoked.connect(forget)
    app.on_partitions_assigned.connect(forget)

    async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
                   headers: list | None = None) -> None:
        """Queue an output; the agents flush the outbox before their records are acked."""
        outbox.send(topic, key, value, partition, headers)

    async def dead_letter(event: faust.types.EventT, reason: str, message: str, stage: str = "ingest") -> None:
        msg = event.message
        await send(topics["dlq"].get_topic_name(), msg.key, msg.value, None, dlq.headers(
            reason, message, stage, msg.topic, msg.partition, msg.offset, list(msg.headers or [])))

    async def misrouted(event: faust.types.EventT, key: bytes) -> bool:
        """Move a record to its user's home partition; True if it was moved."""
        msg = event.message
        home = home_partition(key, parts)
        if msg.partition == home:
            return False
        await send(msg.topic, key, msg.value, home, list(msg.headers or []))
        return True

    def index_of(partition: int) -> DueIndex:
        if partition not in indexes:
            rebuild_indexes(partition)
        return indexes[partition]

    def rebuild_indexes(partition: int) -> None:
        """Index every user of the partitions held but not yet indexed, straight from their RocksDB files
        (a user's state is on its home partition: the pipeline writes it there)."""
        started = time.monotonic()
        fresh = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_topic} - set(indexes)
        fresh.add(partition)
        store = users_table.data
        count = 0
        for p in fresh:
            index = indexes[p] = DueIndex()
            for key, value in store._db_for_partition(p).items():
                if key == store.offset_key or value is None:
                    continue
                due = policy.next_due(orjson.loads(value))
                if due is not None:
                    index.set(key.decode(), due)
                    count += 1
        log.info("indexed %d users of partitions %s in %.2f s", count, sorted(fresh), time.monotonic() - started)

    def user_context(user_id: str, partition: int, now_ms: int) -> tuple[dict, bool]:
        """The user's preferences (defaults filled in) and presence; both live on the user's partition."""
        prefs = effective_prefs.get(user_id)
        if prefs is None:
            if len(effective_prefs) >= 50_000:
                effective_prefs.clear()
            prefs = effective_prefs[user_id] = effective(prefs_table.get(user_id, partition), user_id)
        return prefs, online(presence.get(user_id, partition), now_ms)

    class Step:
        """One batch of records. Users' states are read once and changed in memory; at the end the outputs
        are flushed to Kafka first and only then are the states written, so a state that survives a crash
        always has its outputs in Kafka (which is what lets the policy ignore a record read again)."""

        def __init__(self) -> None:
            self.states: dict[str, dict | None] = {}
            self.home: dict[str, int] = {}  # users changed in this batch -> their partition
            self.stored: set[str] = set()  # users read with a state in the table
            self.released = 0  # users the clock released in this batch (at most HERALD_RELEASE_CHUNK)

        def enter(self, event: faust.types.EventT) -> None:
            _current_event.set(weakref.ref(event))  # table reads look in this record's partition first

        def state(self, user_id: str, partition: int) -> dict | None:
            if user_id not in self.states:
                state = self.states[user_id] = users.get(user_id, partition)
                if state is not None:
                    self.stored.add(user_id)
            return self.states[user_id]

        def put(self, user_id: str, state: dict, partition: int) -> None:
            self.states[user_id] = state
            self.home[user_id] = partition
            index_of(partition).set(user_id, None if policy.is_empty(state) else policy.next_due(state))

        def emit(self, out: policy.Outcome) -> None:
            for request in out.requests:
                topic = delivery_topics[request["channel"]]
                outbox.send(topic, request["user_id"].encode(), codec.encode(f"{topic}-value", "DeliveryRequest", request))
            for decision in out.decisions:
                outbox.send(decisions_topic, decision["user_id"].encode(),
                            codec.encode(decisions_value, "Decision", decision))

        async def commit(self) -> None:
            await flushed()  # the outputs first: a state must never be durable before its outputs are
            changes = []
            for user_id, partition in self.home.items():
                state = self.states[user_id]
                if state is not None and not policy.is_empty(state):
                    changes.append((user_id, state, partition))
                elif user_id in self.stored:
                    changes.append((user_id, None, partition))
            users.write(changes)
            self.home.clear()
            await flushed()  # the states' changelog, before Faust may commit the records that made them
            users_batch.persist_offsets()

    def unread(partition: int) -> int | None:
        """Events of ``partition`` not read yet (None: not known, before its first event or fetch)."""
        if partition not in last_event:
            return None
        try:
            highwater = app.consumer.highwater(faust.types.TP(events_topic, partition))
        except Exception:  # noqa: BLE001 - not known yet
            return None
        return None if highwater is None else max(0, highwater - 1 - last_event[partition][0])

    def tick_time(partition: int, tick_ms: int) -> int:
        """A tick's clock: its own time, unless many events of the partition are still unread (after a
        restart): then the time of the last event read, so nothing is released before they are."""
        waiting = unread(partition)
        if waiting is not None and waiting > BEHIND:
            return min(tick_ms, last_event[partition][1])
        return tick_ms

    async def release(step: Step, partition: int, now_ms: int) -> None:
        """Release the users due on ``partition``, at most HERALD_RELEASE_CHUNK in a batch, a tenth of that
        while events of the partition wait to be read: when more are due (a daily digest for every user), a
        tick to this partition is queued to continue after the records already waiting, so a CRITICAL event
        waits behind a few hundred releases at most, not a million digests."""
        index = index_of(partition)
        busy = bool(unread(partition)) or time.monotonic() - last_read.get(partition, 0.0) < LIVE_S
        budget = max(0, release_limit(settings.release_chunk, busy) - step.released)
        chunk = index.pop_due(now_ms, limit=budget)
        step.released += len(chunk)
        if len(chunk) == budget and (index.next() or now_ms + 1) <= now_ms:
            await send(ticks.get_topic_name(), b"tick", b"", partition)
        for user_id in chunk:
            state = step.state(user_id, partition)
            when = policy.next_due(state) if state else None
            if when is None:
                continue
            if when > now_ms:  # its due time moved
                index.set(user_id, when)
                continue
            prefs, is_online = user_context(user_id, partition, now_ms)
            out = policy.on_tick(state, prefs, is_online, now_ms, config)
            step.put(user_id, out.state, partition)
            step.emit(out)

    async def on_record(step: Step, event: faust.types.EventT) -> None:
        msg = event.message
        now_ms = record_time_ms(msg)
        if msg.topic != events_topic:
            await release(step, msg.partition, tick_time(msg.partition, now_ms))
            return
        last_event[msg.partition] = (msg.offset, now_ms)
        last_read[msg.partition] = time.monotonic()
        schema_id = codec.schema_id_of(msg.value)
        if schema_id is not None and not codec.registry.cached(schema_id):
            # a new or unknown id: ask the registry in a thread, so its retries never stall the loop
            await asyncio.get_running_loop().run_in_executor(None, codec.registry.prefetch, schema_id)
        try:
            record = codec.decode(msg.value, "NotificationEvent")
            validate_event(record, msg.key, now_ms)
        except (DecodeError, ValidationError) as exc:
            await dead_letter(event, exc.reason, exc.message)
            return
        user_id = record["user_id"]
        if await misrouted(event, user_id.encode()):
            return
        prefs, is_online = user_context(user_id, msg.partition, now_ms)
        out = policy.on_event(step.state(user_id, msg.partition), record, prefs, is_online, now_ms,
                              f"{msg.topic}:{msg.partition}:{msg.offset}", config, offset=msg.offset)
        step.put(user_id, out.state, msg.partition)
        step.emit(out)

    source = app.topic(events_topic, f"{settings.app_id}-ticks", key_type=bytes, value_type=bytes)

    @app.agent(source, concurrency=1)
    async def pipeline(stream):  # noqa: ANN001
        async for batch in stream.take_events(settings.take_max, within=settings.take_within_s):
            step = Step()
            for event in batch:
                step.enter(event)
                try:
                    await on_record(step, event)
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream; the record is kept
                    msg = event.message
                    log.exception("failed on %s:%s@%s", msg.topic, msg.partition, msg.offset)
                    if msg.topic == events_topic:
                        await dead_letter(event, "INTERNAL", f"{type(exc).__name__}: {exc}", stage="pipeline")
            await step.commit()

    async def flushed() -> None:
        """Flush the outbox; if it cannot be, stop the worker rather than ack records whose outputs are not
        in Kafka (``take_events`` acks a batch even when the loop raises): they are read again on restart."""
        try:
            await outbox.flush()
        except Exception:  # noqa: BLE001
            log.critical("outputs could not be written to Kafka; stopping so that nothing is lost", exc_info=True)
            os._exit(70)

    @app.agent(topics["preferences"], concurrency=1)
    async def preferences(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            user_id = (msg.key or b"").decode("utf-8", errors="replace")
            if not user_id:
                await dead_letter(event, "VALIDATION", "a preferences record needs the user_id as its key", "preferences")
                await flushed()
                continue
            if await misrouted(event, msg.key):
                await flushed()
                continue
            if msg.value is None:
                del prefs_table[user_id]  # a tombstone resets to the defaults
                effective_prefs.pop(user_id, None)
                continue
            try:
                record = codec.decode(msg.value, "Preferences")
            except DecodeError as exc:
                await dead_letter(event, exc.reason, exc.message, "preferences")
                await flushed()
                continue
            record["updated_at"] = to_ms(record.get("updated_at") or 0)
            prefs_table[user_id] = record
            effective_prefs.pop(user_id, None)

    @app.agent(topics["presence"], concurrency=1)
    async def presence_agent(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            if msg.key is None or msg.value is None:
                continue
            if await misrouted(event, msg.key):
                await flushed()
                continue
            try:
                record = codec.decode(msg.value, "Presence")
            except DecodeError as exc:
                await dead_letter(event, exc.reason, exc.message, "presence")
                await flushed()
                continue
            user_id = record["user_id"]
            if record["online"]:
                # never trust a connection longer than the TTL: an API that crashed cannot renew it
                expires_at = min(to_ms(record["expires_at"]), record_time_ms(msg) + settings.presence_ttl_s * 1000)
                presence[user_id] = {"online": True, "expires_at": expires_at, "connection_id": record["connection_id"]}
            else:
                del presence[user_id]

    @app.timer(interval=settings.tick_interval_s)
    async def tick() -> None:
        for partition in range(parts):
            await ticks.send(key=b"tick", value=b"", partition=partition)

    return app
