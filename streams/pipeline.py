"""The Faust shell of the pipeline: read events, call the policy in ``agents/``, write what it decides.

Nothing here decides anything. The shell:
- decodes and validates each record before any state is touched; a record that fails goes to the
  dead-letter topic with its reason and the stream goes on;
- keeps every user's state on the partition their events are on (a record that a producer's
  partitioner put elsewhere is moved to ``murmur2(user_id)``, Kafka's default, first);
- runs the clock: a timer puts a tick on every partition of an internal topic co-partitioned with the
  events, and the agent, in stream context for that partition, releases what is due (Faust tables can
  only be written from a stream, and ``on_window_close`` is not to be trusted);
- writes requests to the delivery topics and decisions to the decisions topic.
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache

import faust
from aiokafka.partitioner import murmur2

from agents import policy
from agents.preferences import effective
from agents.rate_limit import Limits
from agents.validate import ValidationError, to_ms, validate_event
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from streams import dlq
from streams.app import create_app
from streams.settings import Settings

log = logging.getLogger("herald.pipeline")
MAX_CATCH_UP_S = 7 * 86_400


def policy_config(settings: Settings) -> policy.PolicyConfig:
    return policy.PolicyConfig(
        dedup_window_s=settings.dedup_window_s,
        limits=Limits(settings.rate_per_minute, settings.rate_per_hour, settings.rate_per_day),
        batch_window_s=settings.batch_window_s or None,
        digest_period_s=settings.digest_period_s or None,
    )


@lru_cache(maxsize=65_536)
def home_partition(key: bytes, partitions: int) -> int:
    """Kafka's default (Java) partitioner: where a user's records belong."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def online(entry: dict | None, now_ms: int) -> bool:
    return bool(entry) and entry.get("online", False) and entry.get("expires_at", 0) > now_ms


def build(settings: Settings | None = None) -> faust.App:
    settings = settings or Settings.from_env()
    codec = Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
    app = create_app(settings, codec)
    topics = app.herald_topics  # type: ignore[attr-defined]
    config = policy_config(settings)
    parts = settings.partitions
    ticks = app.topic(f"{settings.app_id}-ticks", key_type=bytes, value_type=bytes)
    users = app.Table("users", default=None, partitions=parts)
    prefs_table = app.Table("preferences", default=None, partitions=parts)
    presence = app.Table("presence", default=None, partitions=parts)
    due = app.Table("due", default=None, partitions=parts)  # "<partition>:<second>" -> [user ids]
    clock = app.Table("clock", default=None, partitions=parts)  # "<partition>" -> last second released

    async def dead_letter(event: faust.types.EventT, reason: str, message: str, stage: str = "ingest") -> None:
        msg = event.message
        await topics["dlq"].send(key=msg.key, value=msg.value, headers=dlq.headers(
            reason, message, stage, msg.topic, msg.partition, msg.offset, list(msg.headers or [])))

    async def misrouted(event: faust.types.EventT, key: bytes, topic: faust.TopicT) -> bool:
        """Move a record to its user's home partition; True if it was moved."""
        msg = event.message
        home = home_partition(key, parts)
        if msg.partition == home:
            return False
        await topic.send(key=key, value=msg.value, partition=home, headers=list(msg.headers or []))
        return True

    async def emit(out: policy.Outcome) -> None:
        for request in out.requests:
            await topics[f"delivery.{request['channel'].lower()}"].send(key=request["user_id"].encode(), value=request)
        for decision in out.decisions:
            await topics["decisions"].send(key=decision["user_id"].encode(), value=decision)

    def save(user_id: str, state: dict, partition: int) -> None:
        if policy.is_empty(state):
            if users.get(user_id) is not None:
                del users[user_id]
            return
        users[user_id] = state
        when = policy.next_due(state)
        if when is not None:
            # never index behind the partition's clock: a second it has passed is not visited again
            passed = clock.get(str(partition))
            if passed is None:  # the partition's clock starts here, so its first tick looks back to now
                passed = int(time.time()) - 1
                clock[str(partition)] = passed
            second = max(when // 1000, passed + 1)
            slot = f"{partition}:{second}"
            waiting = due.get(slot) or []
            if user_id not in waiting:
                due[slot] = [*waiting, user_id]

    def user_context(user_id: str, now_ms: int) -> tuple[dict, bool]:
        return effective(prefs_table.get(user_id), user_id), online(presence.get(user_id), now_ms)

    async def release(partition: int) -> None:
        now_ms = int(time.time() * 1000)
        now_s = now_ms // 1000
        last = clock.get(str(partition))
        start = now_s - 1 if last is None else max(last + 1, now_s - MAX_CATCH_UP_S)
        # move the clock first: a user re-indexed below (due later in this very second) must land after it
        clock[str(partition)] = now_s
        for second in range(start, now_s + 1):
            slot = f"{partition}:{second}"
            waiting = due.get(slot)
            if not waiting:
                continue
            del due[slot]
            for user_id in waiting:
                state = users.get(user_id)
                if state is None or (policy.next_due(state) or now_ms + 1) > now_ms:
                    if state is not None:
                        save(user_id, state, partition)  # re-index: its due time moved
                    continue
                prefs, is_online = user_context(user_id, now_ms)
                out = policy.on_tick(state, prefs, is_online, now_ms, config)
                save(user_id, out.state, partition)
                await emit(out)

    source = app.topic(settings.topic("events"), f"{settings.app_id}-ticks", key_type=bytes, value_type=bytes)

    @app.agent(source, concurrency=1)
    async def pipeline(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            if msg.topic != settings.topic("events"):
                await release(msg.partition)
                continue
            now_ms = int(time.time() * 1000)
            schema_id = codec.schema_id_of(msg.value)
            if schema_id is not None and not codec.registry.cached(schema_id):
                # a new or unknown id: ask the registry in a thread, so its retries never stall the loop
                await asyncio.get_running_loop().run_in_executor(None, codec.registry.prefetch, schema_id)
            try:
                record = codec.decode(msg.value, "NotificationEvent")
                validate_event(record, msg.key, now_ms)
            except (DecodeError, ValidationError) as exc:
                await dead_letter(event, exc.reason, exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream; the record is kept
                log.exception("unexpected error decoding %s:%s@%s", msg.topic, msg.partition, msg.offset)
                await dead_letter(event, "INTERNAL", f"{type(exc).__name__}: {exc}")
                continue
            user_id = record["user_id"]
            if await misrouted(event, user_id.encode(), topics["events"]):
                continue
            try:
                prefs, is_online = user_context(user_id, now_ms)
                out = policy.on_event(users.get(user_id), record, prefs, is_online, now_ms,
                                      f"{msg.topic}:{msg.partition}:{msg.offset}", config)
            except Exception as exc:  # noqa: BLE001
                log.exception("policy failed for %s:%s@%s", msg.topic, msg.partition, msg.offset)
                await dead_letter(event, "INTERNAL", f"{type(exc).__name__}: {exc}", stage="pipeline")
                continue
            save(user_id, out.state, msg.partition)
            await emit(out)

    @app.agent(topics["preferences"], concurrency=1)
    async def preferences(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            user_id = (msg.key or b"").decode("utf-8", errors="replace")
            if not user_id:
                await dead_letter(event, "VALIDATION", "a preferences record needs the user_id as its key", "preferences")
                continue
            if await misrouted(event, msg.key, topics["preferences"]):
                continue
            if msg.value is None:
                if prefs_table.get(user_id) is not None:
                    del prefs_table[user_id]  # a tombstone resets to the defaults
                continue
            try:
                record = codec.decode(msg.value, "Preferences")
            except DecodeError as exc:
                await dead_letter(event, exc.reason, exc.message, "preferences")
                continue
            record["updated_at"] = to_ms(record.get("updated_at") or 0)
            prefs_table[user_id] = record

    @app.agent(topics["presence"], concurrency=1)
    async def presence_agent(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            if msg.key is None or msg.value is None:
                continue
            if await misrouted(event, msg.key, topics["presence"]):
                continue
            try:
                record = codec.decode(msg.value, "Presence")
            except DecodeError as exc:
                await dead_letter(event, exc.reason, exc.message, "presence")
                continue
            user_id = record["user_id"]
            if record["online"]:
                presence[user_id] = {"online": True, "expires_at": to_ms(record["expires_at"]),
                                     "connection_id": record["connection_id"]}
            elif presence.get(user_id) is not None:
                del presence[user_id]

    @app.timer(interval=settings.tick_interval_s)
    async def tick() -> None:
        for partition in range(parts):
            await ticks.send(key=b"tick", value=b"", partition=partition)

    return app
