"""``herald replay``: copy a range of a topic back into the pipeline, or re-drive dead letters.

Replaying a range (``replay``):
- The range is a time (ISO-8601 or epoch milliseconds) or offsets (``offset:N`` on every partition, or
  ``P:N,P:N`` per partition) at each end. ``--from`` is inclusive; ``--until`` is inclusive for a time and
  exclusive for offsets (the first offset not copied). A per-partition ``--from`` copies only the
  partitions it names; a per-partition ``--until`` stops only those, the others go to their end. The end
  is never past the last record when the replay started, so a topic replayed into itself terminates.
- Records are copied byte for byte with their key, headers and original timestamp. The pipeline decides
  an event on its record's timestamp, so a replayed event is decided at the same time as the first time.
- Into the pipeline's events topic, an event that already has a decision in the decisions topic is left
  out (counted as "already decided"): only events the pipeline never decided are copied (a backfill from
  an archive, events lost before they reached Kafka). Why: once an event is past its dedup window the
  pipeline no longer knows it, and a batchable event whose batch window was sent goes to the next open
  window (the policy's rule for late events), so a batch re-formed of replayed events gets a new
  ``delivery_id`` and would reach the user again. The decisions read are those written since a dedup
  window before ``--from`` (a time) or all of them (offsets), up to the end when the replay starts; a record that does not decode
  is copied as it is (the pipeline dead-letters it). ``include_decided`` copies the decided ones too: one
  still in its dedup window is then DEDUPLICATED, one decided again alone (not batched) gets the same
  ``delivery_id``, which the sinks' ledger has already seen.
- Keys are partitioned by Kafka's default partitioner: a replayed event lands on its user's home partition.
- Between two Herald topics of different schemas (decisions into events, say) nothing is copied: every
  record would be dead-lettered.

Re-driving dead letters (``redrive``):
- Each dead letter goes back to its ``herald.source.topic`` (or the ``--to`` topic), with its original
  headers and ``herald.source.*`` kept, the ``herald.error.*`` ones dropped and ``herald.replayed.from``
  added (``<dlq topic>:<partition>:<offset>``). It gets a new timestamp: it was never decided, so it is
  decided now.
- Only what would pass now is sent: the record is decoded (and, for events and preferences, validated)
  with the current code, schemas and registry, as the stage reading the destination topic would. One that
  still fails is refused: counted by its reason and reported by its place (partition and offset, never its
  content), not sent. Also refused: a truncated dead letter (its value was cut), one whose destination is
  unknown or is the dead-letter topic itself, and a sink's dead letter for a delivery that reached the
  sinks' ledger (MAX_ATTEMPTS, IN_DOUBT, REJECTED, ...): that delivery is final there and is never sent again.
"""
from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

from herald.kafka import client_config, produce
from herald.settings import Settings

REPLAYED_FROM = "herald.replayed.from"
# the reasons whose check can be repeated: decoding, validation, and a pipeline bug since fixed
REDRIVABLE = ("TOMBSTONE", "TOO_LARGE", "INVALID_MAGIC_BYTE", "SCHEMA_NOT_FOUND", "SCHEMA_MISMATCH", "DECODE_ERROR",
              "VALIDATION", "INTERNAL")
SINK_STAGE = "sink-"
_PER_PARTITION = re.compile(r"^\d+:\d+(,\d+:\d+)*$")


class ReplayError(Exception):
    """A mistake in the command line or a broker that did not take the records; one line for the user."""


@dataclass(frozen=True)
class Position:
    """One end of a range: a time in ms, or offsets (``every`` for all partitions, or ``offsets`` per partition)."""

    ms: int | None = None
    every: int | None = None
    offsets: dict[int, int] | None = None


@dataclass(frozen=True)
class Span:
    """What to read of one partition: offsets ``first`` up to ``stop`` (exclusive), timestamps up to ``until_ms``."""

    partition: int
    first: int
    stop: int
    until_ms: int | None = None


@dataclass
class Counts:
    read: int = 0
    sent: Counter = field(default_factory=Counter)       # destination topic -> records
    refused: Counter = field(default_factory=Counter)    # why -> records
    skipped: int = 0                                     # dead letters of another reason than --reason
    decided: int = 0                                     # events left out: the pipeline already decided them


def parse_position(text: str | None) -> Position | None:
    """``--from``/``--until`` as a Position: epoch ms (digits), ``offset:N``, ``P:N,P:N`` or ISO-8601."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return Position(ms=int(text))
    if text.startswith("offset:") and text[7:].isdigit():
        return Position(every=int(text[7:]))
    if _PER_PARTITION.match(text):
        return Position(offsets={int(p): int(o) for p, o in (part.split(":") for part in text.split(","))})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{text!r} is not a time (ISO-8601 or epoch ms) nor offsets (offset:N or P:N,P:N)") from None
    return Position(ms=int(moment.timestamp() * 1000))


def _starts(consumer: Any, topic: str, partitions: list[int], start: Position | None) -> dict[int, int]:
    """The first offset to read in each partition (partitions a per-partition start does not name are left out)."""
    from confluent_kafka import TopicPartition

    if start is None or start.every is not None:
        return {p: (start.every if start else 0) for p in partitions}
    if start.offsets is not None:
        return {p: o for p, o in start.offsets.items() if p in partitions}
    found = consumer.offsets_for_times([TopicPartition(topic, p, start.ms) for p in partitions], timeout=10)
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def _after(consumer: Any, topic: str, partitions: list[int], ms: int) -> dict[int, int]:
    """The first offset of each partition with a timestamp after ``ms`` (partitions without one left out)."""
    from confluent_kafka import TopicPartition

    found = consumer.offsets_for_times([TopicPartition(topic, p, ms + 1) for p in partitions], timeout=10)
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def plan(consumer: Any, topic: str, start: Position | None, end: Position | None) -> list[Span]:
    """The spans to read: from ``start`` to ``end``, never past the partitions' ends when asked."""
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ReplayError(f"no topic {topic!r}; `herald status` lists the topics")
    partitions = sorted(meta.partitions)
    if start and start.offsets and not set(start.offsets) <= set(partitions):
        raise ReplayError(f"{topic} has partitions {partitions[0]} to {partitions[-1]}; --from names others")
    spans = []
    after_end = _after(consumer, topic, partitions, end.ms) if end is not None and end.ms is not None else {}
    for p, first in sorted(_starts(consumer, topic, partitions, start).items()):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        stop = min(high, after_end.get(p, high))
        if end is not None and end.every is not None:
            stop = min(stop, end.every)
        elif end is not None and end.offsets is not None and p in end.offsets:
            stop = min(stop, end.offsets[p])
        first = max(first, low)
        if first < stop:
            spans.append(Span(p, first, stop, end.ms if end is not None else None))
    return spans


def read(consumer: Any, topic: str, spans: list[Span]) -> Iterator[Any]:
    """Every record of ``spans`` as they arrive (each partition's in offset order); a partition ends at its stop
    offset, at its first record stamped after ``until_ms``, or at its end."""
    from confluent_kafka import KafkaError, TopicPartition

    by_partition = {s.partition: s for s in spans}
    if not spans:
        return
    consumer.assign([TopicPartition(topic, s.partition, s.first) for s in spans])
    open_ = set(by_partition)
    while open_:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                open_.discard(msg.partition())
                continue
            raise ReplayError(str(msg.error()))
        span = by_partition[msg.partition()]
        if msg.partition() not in open_:
            continue
        if msg.offset() >= span.stop or (span.until_ms is not None and msg.timestamp()[1] > span.until_ms):
            open_.discard(msg.partition())
            consumer.incremental_unassign([TopicPartition(topic, msg.partition())])
            continue
        yield msg


def consumer_for(settings: Settings) -> Any:
    from confluent_kafka import Consumer

    return Consumer({**client_config(settings), "group.id": f"herald-replay-{uuid.uuid4()}",
                     "enable.auto.commit": False, "enable.partition.eof": True})


class Sender:
    """A producer with Kafka's default partitioner (``herald.kafka.make_producer``) that keeps count of the
    records the broker did not acknowledge."""

    def __init__(self, settings: Settings) -> None:
        from herald.kafka import make_producer

        self.producer = make_producer(settings, **{"linger.ms": 20})
        self.failures: list[str] = []

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list | None,
             timestamp: int | None = None) -> None:
        """Queue one record (``timestamp`` in ms, None for now: a replay keeps the record's own)."""
        produce(self.producer, topic, value, key, headers=headers or [], on_delivery=self._delivered, timestamp=timestamp)
        self.producer.poll(0)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def finish(self) -> None:
        """Wait for every acknowledgement; raise ReplayError when some record was not taken."""
        remaining = self.producer.flush(30)
        if remaining or self.failures:
            raise ReplayError(f"{remaining + len(self.failures)} records were not acknowledged by Kafka"
                              + (f": {self.failures[0]}" if self.failures else ""))


Tick = Callable[[int], None]  # called with the records handled so far


def same_schema(settings: Settings, source: str, dest: str) -> None:
    """Raise ReplayError when both are Herald topics whose values have different schemas (e.g. decisions into
    events): every record would be dead-lettered. Other topics, and the dead-letter topic, are not judged."""
    _, from_schema, _ = schema_of(settings, source)
    _, to_schema, _ = schema_of(settings, dest)
    if from_schema and to_schema and from_schema != to_schema:
        raise ReplayError(f"{source} carries herald.{from_schema} and {dest} takes herald.{to_schema}: "
                          "replay into a topic of the same schema")


def decided_ids(settings: Settings, since_ms: int | None, tick: Tick = lambda n: None) -> set[str]:
    """The event_ids of every decision in the decisions topic written since ``since_ms`` (None: all), up to
    the end now."""
    from schemas.codec import Codec, DecodeError
    from schemas.registry import Registry

    codec = Codec(Registry.from_settings(settings))
    topic, out = settings.topic("decisions"), set()
    consumer = consumer_for(settings)
    try:
        spans = plan(consumer, topic, Position(ms=since_ms) if since_ms is not None else None, None)
        for n, msg in enumerate(read(consumer, topic, spans), 1):
            try:
                out.add(codec.decode(msg.value(), "Decision")["event_id"])
            except DecodeError:
                pass
            tick(n)
    finally:
        consumer.close()
    return out


def event_id_of(codec: Any, value: bytes | None) -> str | None:
    """The event_id of an encoded NotificationEvent, or None when it does not decode."""
    from schemas.codec import DecodeError

    try:
        return codec.decode(value, "NotificationEvent", max_bytes=1 << 30)["event_id"]
    except (DecodeError, KeyError, TypeError):
        return None


def replay(settings: Settings, source: str, dest: str, start: Position | None, end: Position | None,
           limit: int = 0, tick: Tick = lambda n: None, on_plan: Callable[[int], None] = lambda total: None,
           include_decided: bool = False) -> Counts:
    """Copy ``source``'s records from ``start`` to ``end`` (at most ``limit`` read; 0: all) to ``dest`` with
    their key, headers and timestamp; into the events topic, without the events already decided unless
    ``include_decided``."""
    same_schema(settings, source, dest)
    counts = Counts()
    decided: set[str] | None = None
    codec = None
    if dest == settings.topic("events") and not include_decided:
        from schemas.codec import Codec
        from schemas.registry import Registry

        # from a dedup window earlier: a producer's clock ahead of the worker's stamps an event after its decision
        since = start.ms - settings.dedup_window_s * 1000 if start is not None and start.ms is not None else None
        decided = decided_ids(settings, since)
        codec = Codec(Registry.from_settings(settings))
    consumer, sender = consumer_for(settings), Sender(settings)
    try:
        spans = plan(consumer, source, start, end)
        on_plan(sum(s.stop - s.first for s in spans))
        for msg in read(consumer, source, spans):
            counts.read += 1
            tick(counts.read)
            if decided and event_id_of(codec, msg.value()) in decided:
                counts.decided += 1
            else:
                kind, ts = msg.timestamp()
                sender.send(dest, msg.value(), msg.key(), msg.headers(), ts if kind and ts > 0 else None)
                counts.sent[dest] += 1
            if limit and counts.read >= limit:
                break
    finally:
        consumer.close()
    sender.finish()
    return counts


# -- dead letters ----------------------------------------------------------------------------------

def header_text(headers: list | None, name: str) -> str | None:
    for k, v in headers or []:
        if k == name and v is not None:
            return v.decode("utf-8", errors="replace")
    return None


def redrive_headers(headers: list | None, dlq_topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The dead letter's headers without ``herald.error.*`` (and any earlier ``herald.replayed.from``), plus
    ``herald.replayed.from`` naming this dead letter."""
    kept = [(k, v) for k, v in headers or [] if not k.startswith("herald.error.") and k != REPLAYED_FROM]
    return kept + [(REPLAYED_FROM, f"{dlq_topic}:{partition}:{offset}".encode())]


def schema_of(settings: Settings, topic: str) -> tuple[bool, str | None, bool]:
    """(a Herald topic?, its value schema, compacted?) for a full topic name."""
    from herald.topics import SPECS

    for spec in SPECS:
        if settings.topic(spec.name) == topic:
            return True, spec.schema, spec.compacted
    return False, None, False


class Checker:
    """Whether a record would pass the check of the stage reading ``topic`` now: None, or (code, message)."""

    def __init__(self, settings: Settings, codec: Any = None) -> None:
        from schemas.codec import Codec
        from schemas.registry import Registry

        self.settings = settings
        self.codec = codec or Codec(Registry.from_settings(settings), max_bytes=settings.max_event_bytes)

    def check(self, topic: str, key: bytes | None, value: bytes | None, now_ms: int) -> tuple[str, str] | None:
        from agents.preferences import validate as validate_preferences
        from agents.validate import ValidationError, validate_event
        from schemas.codec import DecodeError

        known, schema, compacted = schema_of(self.settings, topic)
        if known and schema is None:
            return "DESTINATION", "the destination is the dead-letter topic"
        if schema == "Preferences" and not key:
            return "VALIDATION", "a preferences record needs the user_id as its key"
        if value is None and compacted:
            return None  # a tombstone on a compacted topic resets the key: that is its meaning
        try:
            record = self.codec.decode(value, schema)
        except DecodeError as exc:
            return exc.reason, exc.message
        try:
            if schema == "NotificationEvent":
                validate_event(record, key, now_ms)
        except ValidationError as exc:
            return exc.reason, exc.message
        if schema == "Preferences" and (problems := validate_preferences(record, ignore_unknown=True)):
            return "VALIDATION", "; ".join(problems)
        return None


def verdict(checker: Checker, msg: Any, to: str | None, now_ms: int) -> tuple[str | None, tuple[str, str] | None]:
    """(destination, None) for a dead letter to re-drive, or (destination, (why, message)) for one refused."""
    headers = msg.headers()
    dest = to or header_text(headers, "herald.source.topic")
    reason = header_text(headers, "herald.error.reason") or ""
    stage = header_text(headers, "herald.error.stage") or ""
    if not dest:
        return None, ("NO_SOURCE", "no herald.source.topic header and no --to")
    if header_text(headers, "herald.error.truncated") is not None:
        return dest, ("TRUNCATED", "the dead letter's value was cut to fit; the original is lost")
    if stage.startswith(SINK_STAGE) and (reason not in REDRIVABLE or reason == "INTERNAL"):
        return dest, ("DELIVERY_FINAL", f"{reason}: the delivery is final in the sinks' ledger, never sent again")
    from schemas.registry import RegistryUnavailable

    try:
        return dest, checker.check(dest, msg.key(), msg.value(), now_ms)
    except RegistryUnavailable as exc:
        raise ReplayError(f"the schema registry cannot answer, so nothing can be checked: {exc}") from None


def redrive(settings: Settings, source: str, to: str | None, reasons: set[str], start: Position | None,
            end: Position | None, limit: int = 0, dry_run: bool = False, tick: Tick = lambda n: None,
            on_plan: Callable[[int], None] = lambda total: None,
            on_refused: Callable[[Any, str, str], None] = lambda msg, why, message: None,
            checker: Checker | None = None) -> Counts:
    """Send the dead letters of ``source`` (those of ``reasons``; all when empty) that pass their check now
    back to their source topic (or ``to``); refuse the others. ``dry_run`` sends nothing."""
    counts = Counts()
    checker = checker or Checker(settings)
    consumer = consumer_for(settings)
    sender = None if dry_run else Sender(settings)
    try:
        spans = plan(consumer, source, start, end)
        on_plan(sum(s.stop - s.first for s in spans))
        for msg in read(consumer, source, spans):
            counts.read += 1
            tick(counts.read)
            if reasons and header_text(msg.headers(), "herald.error.reason") not in reasons:
                counts.skipped += 1
                continue
            dest, refused = verdict(checker, msg, to, int(time.time() * 1000))
            if refused is not None:
                counts.refused[refused[0]] += 1
                on_refused(msg, *refused)
            elif dest is not None:
                if sender is not None:
                    sender.send(dest, msg.value(), msg.key(),
                                redrive_headers(msg.headers(), source, msg.partition(), msg.offset()))
                counts.sent[dest] += 1
            if limit and counts.read >= limit:
                break
    finally:
        consumer.close()
    if sender is not None:
        sender.finish()
    return counts
