"""The Faust shell of the pipeline: read events, call the policy in ``agents/``, write what it decides.

Nothing here decides anything. Each record is decoded and validated before any state is touched;
a record that fails goes to the dead-letter topic with its reason and the stream goes on, so one
bad record can never stop the agent.
"""
from __future__ import annotations

import logging
import time

import faust

from agents import dedup, route
from agents.validate import ValidationError, validate_event
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from streams import dlq
from streams.app import create_app
from streams.settings import Settings

log = logging.getLogger("herald.pipeline")


def build(settings: Settings | None = None) -> faust.App:
    settings = settings or Settings.from_env()
    codec = Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
    app = create_app(settings, codec)
    topics = app.herald_topics  # type: ignore[attr-defined]
    window_ms = settings.dedup_window_s * 1000
    # keys and values are plain JSON (Faust's default serializer for non-model types)
    seen = app.Table("dedup", default=None, partitions=settings.partitions)

    async def dead_letter(event: faust.types.EventT, reason: str, message: str) -> None:
        msg = event.message
        await topics["dlq"].send(key=msg.key, value=msg.value, headers=dlq.headers(
            reason, message, "ingest", msg.topic, msg.partition, msg.offset, list(msg.headers or [])))

    async def emit(routed: route.Routed) -> None:
        for request in routed.requests:
            await topics[f"delivery.{request['channel'].lower()}"].send(key=request["user_id"].encode(), value=request)
        await topics["decisions"].send(key=routed.decision["user_id"].encode(), value=routed.decision)

    @app.agent(topics["events"], concurrency=1)
    async def pipeline(stream):  # noqa: ANN001
        async for event in stream.events():
            msg = event.message
            now_ms = int(time.time() * 1000)
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
            source = f"{msg.topic}:{msg.partition}:{msg.offset}"
            key = dedup.dedup_key(record)
            previous = seen.get(key)
            if dedup.is_duplicate(previous, source, now_ms, window_ms):
                await emit(route.duplicate(record, now_ms, previous["event_id"]))
                continue
            if previous is None or previous["source"] != source:
                seen[key] = {"event_id": record["event_id"], "at_ms": now_ms, "source": source}
            await emit(route.route(record, now_ms))

    return app
