"""The benchmark workload: N notification events over U users, generated whole before any clock starts.

Every benchmark that compares Herald with its peers reads the same records from the same topic, so the
workload is made once, in memory, then produced. It prints what it generated and how fast it produced:

    python -m bench.workload --events 200000 --users 20000
    generated 200,000 events over 20,000 users in 1.38 s (144,542 events/s): LOW 50.1%, NORMAL 35.0%, ...
    produced 200,000 events to bench01fa43.events in 0.53 s (376,865 events/s), 4,000 preferences to ...
    {"topic_prefix": "bench01fa43.", "events_topic": "bench01fa43.events", ... "produce_events_per_s": 376865.0}

The mix, fixed by ``seed``:
- priorities LOW 50%, NORMAL 35%, HIGH 10%, CRITICAL 5%; types COMMENT 25%, TASK_DEADLINE 20%,
  MENTION 15%, HABIT_REMINDER 15%, PROJECT_MILESTONE 10%, SYSTEM 15% (never CANCEL);
- users drawn uniformly from ``bench-user-0`` .. ``bench-user-{U-1}``; the record key is the user id;
- ``duplicate_share`` (10%) of the records repeat one of the last 10,000 originals, so they keep the
  mix: half are producer retries (the same event_id, the very same bytes), half a new event with the
  same user, type, priority and ``dedup_key`` (every type but COMMENT and MENTION carries one). Either way the
  pipeline must decide it DEDUPLICATED, and it comes within seconds of its original, well inside the
  5-minute dedup window at any plausible rate;
- ``occurred_at`` starts at the generation time and advances 1 ms every 100 events;
- Preferences records (``generate_preferences``) for ``preferences_share`` (20%) of the users, keyed
  by user id: a time zone, a disabled channel or type for some, quiet hours for 30% of them, an hourly
  or daily digest for 10%.

Values are Avro in the Confluent wire format with the schema id the registry gave. Encoding is field by
field (``FieldwiseEncoder``): each of the 24 (type, priority) shapes has its constant fields encoded
once, and only event_id, user_id (encoded once per user), data, occurred_at and dedup_key are written
per record: about 0.8 us a record against 6-8 us for fastavro record by record, and byte-for-byte the
same (a test checks). 1,000,000 events generate in 8-10 s on a busy 2-core machine, mostly the random
draws; the topics are created and the schemas registered before, the records produced after.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import fastavro

from schemas.codec import Codec
from schemas.loader import load_schema
from schemas.writer import long_bytes, text_bytes

if TYPE_CHECKING:
    from herald.settings import Settings

PRIORITIES: tuple[tuple[str, float], ...] = (("LOW", 0.50), ("NORMAL", 0.35), ("HIGH", 0.10), ("CRITICAL", 0.05))
TYPES: tuple[tuple[str, float], ...] = (("COMMENT", 0.25), ("TASK_DEADLINE", 0.20), ("MENTION", 0.15),
                                        ("HABIT_REMINDER", 0.15), ("PROJECT_MILESTONE", 0.10), ("SYSTEM", 0.15))
# The dedup_key an original of each type carries; None: the type has none (only its event_id dedups it).
DEDUP_KEYS: dict[str, str | None] = {"COMMENT": None, "MENTION": None, "TASK_DEADLINE": "deadline:{e}",
                                     "HABIT_REMINDER": "habit:{e}", "PROJECT_MILESTONE": "milestone:{e}",
                                     "SYSTEM": "system:{e}"}
TEXTS: dict[str, tuple[str, str]] = {
    "COMMENT": ("New comment", "Someone commented on a task you follow."),
    "TASK_DEADLINE": ("Task due soon", "A task assigned to you is due within the hour."),
    "MENTION": ("You were mentioned", "Someone mentioned you in a discussion."),
    "HABIT_REMINDER": ("Habit reminder", "Time for your daily habit."),
    "PROJECT_MILESTONE": ("Milestone reached", "A project you are in reached a milestone."),
    "SYSTEM": ("System notice", "Scheduled maintenance tonight from 02:00 to 03:00 UTC."),
}
RECENT = 10_000  # duplicates repeat one of this many latest originals
TIMEZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "America/Sao_Paulo")
HEADER = struct.Struct(">bI")


def user_id(i: int) -> str:
    return f"bench-user-{i}"


def _cumulative(weights: Sequence[tuple[str, float]]) -> list[tuple[float, str]]:
    total, out = 0.0, []
    for name, weight in weights:
        total += weight
        out.append((total, name))
    out[-1] = (float("inf"), out[-1][1])  # no rounding gap at the top
    return out


def _pick(table: list[tuple[float, str]], x: float) -> str:
    for bound, name in table:
        if x < bound:
            return name
    raise AssertionError("unreachable: the last bound is infinite")


# --- Avro binary, field by field ------------------------------------------------------------------

_long = long_bytes  # Avro's long (and int), as Herald's output writers write it
_string = text_bytes


def _map_of_strings(m: dict[str, str]) -> bytes:
    if not m:
        return b"\x00"
    return _long(len(m)) + b"".join(_string(k) + _string(v) for k, v in m.items()) + b"\x00"


def _nullable(write: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    return lambda v: b"\x00" if v is None else b"\x02" + write(v)


def _direct_writer(avro_type: Any) -> Callable[[Any], bytes] | None:
    """A hand-written encoder for the types whose values are mostly distinct, or None for the rest."""
    if isinstance(avro_type, dict) and avro_type.get("type") in ("string", "long") and "logicalType" in avro_type:
        avro_type = avro_type["type"] if avro_type["logicalType"] in ("timestamp-millis", "uuid") else avro_type
    if avro_type == "string":
        return _string
    if avro_type in ("long", "int"):
        return _long
    if isinstance(avro_type, dict) and avro_type.get("type") == "map" and avro_type.get("values") == "string":
        return _map_of_strings
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        inner = _direct_writer(avro_type[1])
        return _nullable(inner) if inner else None
    return None


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _names_only(node: Any, defined: set[str]) -> Any:
    """``node`` with every named type definition replaced by its full name (they are all known already)."""
    if isinstance(node, list):
        return [_names_only(n, defined) for n in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            name = node["name"] if "." in node["name"] else f"{node.get('namespace', 'herald')}.{node['name']}"
            if name in defined:
                return name
        return {k: _names_only(v, defined) if k in ("type", "items", "values") else v for k, v in node.items()}
    return node


class FieldwiseEncoder:
    """Avro binary of a record schema, the same bytes fastavro writes, built from per-field pieces.

    Strings, longs, maps of strings and their nullable unions are written directly; any other field's
    bytes are encoded by fastavro once per distinct value and reused (enums, arrays of enums, records).
    """

    def __init__(self, schema_name: str) -> None:
        schema = load_schema(schema_name)
        named: dict = {}
        fastavro.parse_schema(schema, named_schemas=named)
        self._writers: list[tuple[str, Callable[[Any], bytes]]] = []
        for field in schema["fields"]:
            direct = _direct_writer(field["type"])
            if direct is None:
                one = fastavro.parse_schema(
                    {"type": "record", "name": f"bench.One_{field['name']}",
                     "fields": [{"name": "v", "type": _names_only(field["type"], set(named))}]},
                    named_schemas=dict(named))
                direct = self._cached(one)
            self._writers.append((field["name"], direct))
        self._defaults = {f["name"]: f["default"] for f in schema["fields"] if "default" in f}

    @staticmethod
    def _cached(one: dict) -> Callable[[Any], bytes]:
        cache: dict[Any, bytes] = {}

        def write(value: Any) -> bytes:
            key = _freeze(value)
            found = cache.get(key)
            if found is None:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, one, {"v": value})
                found = cache[key] = buf.getvalue()
            return found
        return write

    def encode(self, record: dict) -> bytes:
        defaults = self._defaults
        return b"".join(write(record[name] if name in record else defaults[name]) for name, write in self._writers)

    def shape(self, constants: dict, raw: Iterable[str] = ()) -> Callable[..., bytes]:
        """An encoder for the records that share ``constants`` (every field not named there varies):
        it takes the varying fields' values, in schema order, and returns the record's bytes. The
        constant fields are encoded once, here, as runs of bytes between the varying ones. The fields
        named in ``raw`` are passed already encoded (``encode_field`` makes them)."""
        raw = set(raw)
        template: list[bytes] = []
        slots: list[tuple[int, Callable[[Any], bytes] | None]] = []
        run = b""
        for name, write in self._writers:
            if name in constants:
                run += write(constants[name])
                continue
            if run:
                template.append(run)
                run = b""
            slots.append((len(template), None if name in raw else write))
            template.append(b"")
        if run:
            template.append(run)
        plan = tuple(slots)

        def encode(*values: Any) -> bytes:
            if len(values) != len(plan):
                raise TypeError(f"this shape takes {len(plan)} varying values, not {len(values)}")
            out = template.copy()
            for (slot, write), value in zip(plan, values):
                out[slot] = value if write is None else write(value)
            return b"".join(out)
        return encode

    def encode_field(self, name: str, value: Any) -> bytes:
        """One field's bytes, to pass as a ``raw`` value to a shape."""
        for field, write in self._writers:
            if field == name:
                return write(value)
        raise KeyError(name)


# --- generation --------------------------------------------------------------------------------------

def generate_events(codec: Codec, subject: str, n: int = 1_000_000, users: int = 100_000, seed: int = 1, *,
                    duplicate_share: float = 0.10, now_ms: int | None = None,
                    tally: Counter | None = None) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value) records of ``herald.NotificationEvent`` for ``subject``, deterministic for a seed
    (and ``now_ms``). ``tally``, when given, receives counts: ``priority:<P>``, ``type:<T>``,
    ``originals``, ``duplicates``, ``resent_event_id``, ``repeated_dedup_key``."""
    rng = random.Random(seed)
    rand, randrange = rng.random, rng.randrange
    priorities, types = _cumulative(PRIORITIES), _cumulative(TYPES)
    header = HEADER.pack(0, codec.registry.register(subject, "NotificationEvent"))
    encoder = FieldwiseEncoder("NotificationEvent")
    # varying: event_id, user_id, data, occurred_at, dedup_key; the rest is one of 24 shapes. The user
    # ids and times are encoded once each, the data map ({"entity_id": <i>}) around its one value.
    shapes = {(t, p): encoder.shape({"type": t, "priority": p, "title": TEXTS[t][0], "body": TEXTS[t][1],
                                     "batchable": True, "channels": None, "deliver_after": None, "cancel_key": None},
                                    raw=("user_id", "data", "occurred_at"))
              for t, _ in TYPES for p, _ in PRIORITIES}
    base_ms = int(time.time() * 1000) if now_ms is None else now_ms
    keys = [user_id(i).encode() for i in range(users)]
    ids = [encoder.encode_field("user_id", user_id(i)) for i in range(users)]
    entity_head = encoder.encode_field("data", {"entity_id": ""})[:-2]  # block count, key; then value, 0
    times: dict[int, bytes] = {}
    originals = 0
    # (key, value, user, type, priority, dedup_key) of the latest originals; a duplicate picks one of them
    # uniformly (so duplicates keep the mix), then repeats its dedup_key when it has one, with the
    # chance that makes the two kinds of duplicate equally likely overall, or re-sends it
    recent: list[tuple[bytes, bytes, int, str, str, str | None]] = []
    keyed_share = sum(share for name, share in TYPES if DEDUP_KEYS[name])
    repeat_key = min(1.0, 0.5 / keyed_share) if keyed_share else 0.0
    counts: Counter = Counter()
    mix: dict[tuple[str, str], int] = dict.fromkeys(shapes, 0)  # (type, priority) -> records
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    for i in range(n):
        occurred = times.get(i // 100)
        if occurred is None:
            times.clear()
            occurred = times[i // 100] = encoder.encode_field("occurred_at", base_ms + i // 100)
        if recent and rand() < duplicate_share:
            key, value, u, type_, priority, dedup = recent[randrange(len(recent))]
            if dedup is not None and rand() < repeat_key:
                data = entity_head + _string(str(i)) + b"\x00"
                value = header + shapes[type_, priority](f"ev{seed}-{i}", ids[u], data, occurred, dedup)
                counts["repeated_dedup_key"] += 1
            else:
                counts["resent_event_id"] += 1
            append((key, value))
            mix[type_, priority] += 1
            continue
        u = randrange(users)
        priority = _pick(priorities, rand())
        type_ = _pick(types, rand())
        pattern = DEDUP_KEYS[type_]
        dedup = pattern.format(e=i) if pattern else None
        data = entity_head + _string(str(i)) + b"\x00"
        value = header + shapes[type_, priority](f"ev{seed}-{i}", ids[u], data, occurred, dedup)
        append((keys[u], value))
        mix[type_, priority] += 1
        _remember(recent, (keys[u], value, u, type_, priority, dedup), originals)
        originals += 1
    if tally is not None:
        counts["originals"] = originals
        counts["duplicates"] = n - originals
        for (type_, priority), count in mix.items():
            counts[f"type:{type_}"] += count
            counts[f"priority:{priority}"] += count
        tally.update(counts)
    return out


def _remember(ring: list, item: Any, seq: int) -> None:
    """Keep the latest ``RECENT`` items: ``item`` is the ``seq``-th remembered, and replaces the oldest."""
    if len(ring) < RECENT:
        ring.append(item)
    else:
        ring[seq % RECENT] = item


def generate_preferences(codec: Codec, subject: str, users: int = 100_000, share: float = 0.20, seed: int = 1, *,
                         now_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    """``herald.Preferences`` (key, value) records for ``round(users * share)`` distinct users, chosen with
    the seed, in user order."""
    rng = random.Random(seed + 7919)
    updated = int(time.time() * 1000) if now_ms is None else now_ms
    chosen = sorted(rng.sample(range(users), round(users * share)))
    out = []
    for u in chosen:
        r = rng.random()
        prefs = {
            "user_id": user_id(u),
            "timezone": TIMEZONES[rng.randrange(len(TIMEZONES))],
            "channels": {"SMS": False} if r < 0.3 else ({"EMAIL": False} if r < 0.4 else {}),
            "types": {"SYSTEM": False} if rng.random() < 0.1 else {},
            "minimum_priority": "NORMAL" if rng.random() < 0.1 else "LOW",
            "quiet_hours": {"start": "22:00", "end": "07:00"} if rng.random() < 0.3 else None,
            "dnd": [],
            "digest_mode": "IMMEDIATE",
            "digest_time": None,
            "digest_day": None,
            "batching": True,
            "batch_window_s": 30,
            "max_batch_size": 50,
            "max_per_hour": None,
            "updated_at": updated,
        }
        d = rng.random()
        if d < 0.05:
            prefs["digest_mode"] = "HOURLY"
        elif d < 0.10:
            prefs["digest_mode"], prefs["digest_time"] = "DAILY", "08:00"
        out.append((prefs["user_id"].encode(), codec.encode(subject, "Preferences", prefs)))
    return out


# --- producing ------------------------------------------------------------------------------------------

def producer_config(bootstrap: str) -> dict:
    """Herald's producer settings for bulk loads: Kafka's partitioner, large batches, a deep queue."""
    return {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 50,
            "batch.size": 1_000_000, "batch.num.messages": 100_000, "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_151, "delivery.report.only.error": True}


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], progress: bool = True,
            timeout_s: float = 300.0) -> dict:
    """Produce ``records`` (key, value) to ``topic`` and wait until every one is acknowledged.
    Returns ``{"records", "seconds", "records_per_s", "errors"}``; raises when the flush times out."""
    from confluent_kafka import Producer

    errors: list = []
    producer = Producer({**producer_config(bootstrap), "on_delivery": lambda err, msg: errors.append(err) if err else None})
    produce_one, poll = producer.produce, producer.poll
    started = last_report = time.monotonic()
    count = 0
    for key, value in records:
        while True:
            try:
                produce_one(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        count += 1
        if count % 20_000 == 0:
            poll(0)
            now = time.monotonic()
            if progress and now - last_report >= 2:
                last_report = now
                print(f"  produced {count:,} to {topic} ({count / (now - started):,.0f}/s)", file=sys.stderr, flush=True)
    left = producer.flush(timeout_s)
    seconds = time.monotonic() - started
    if left:
        raise RuntimeError(f"{left:,} of {count:,} records to {topic} were not acknowledged within {timeout_s:.0f} s")
    return {"records": count, "seconds": round(seconds, 3), "records_per_s": round(count / seconds, 1) if seconds else 0.0,
            "errors": len(errors)}


# --- topics -----------------------------------------------------------------------------------------------

def create_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Create plain topics (idempotent), e.g. a benchmark's output topics beside Herald's own."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    for future in admin.create_topics(wanted, request_timeout=timeout_s).values():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def delete_topics(bootstrap: str, matches: Callable[[str], bool], timeout_s: float = 30.0) -> list[str]:
    """Delete every topic whose name ``matches`` (a benchmark's own, after it); returns the names."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if matches(t)]
    for future in (admin.delete_topics(names, operation_timeout=timeout_s).values() if names else ()):
        try:
            future.result(timeout_s)
        except Exception:  # noqa: BLE001 - already gone, or being deleted: either way it goes
            pass
    return names


def partitions_of(bootstrap: str, topic: str, timeout_s: float = 30.0) -> int:
    """How many partitions ``topic`` has (a benchmark's output topics get as many)."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=timeout_s).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"topic {topic}: {meta.error.str()}")
    return len(meta.partitions)


def end_offsets_total(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    """The number of records in ``topic`` (sum of its partitions' high watermarks; no compaction assumed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions)
    finally:
        consumer.close()


def unique_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:6]}."


# --- the whole workload -------------------------------------------------------------------------------------

def run(events: int = 1_000_000, users: int = 100_000, seed: int = 1, *, settings: Settings | None = None,
        duplicate_share: float = 0.10, preferences_share: float = 0.20, progress: bool = True) -> dict:
    """Create Herald's topics under a prefix (a new ``benchXXXXXX.`` unless ``settings`` names one), register
    the schemas, generate the workload, produce the preferences then the events, and return the figures:
    ``topic_prefix``, ``events_topic``, ``preferences_topic``, ``partitions``, ``workload_*`` counts,
    ``generate_s``, ``generate_events_per_s``, ``produce_s``, ``produce_events_per_s``."""
    from herald.settings import Settings
    from herald.topics import ensure_topics, register_schemas
    from schemas.registry import Registry

    if settings is None:
        prefix = unique_prefix()
        settings = Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}pipeline")
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    ensure_topics(settings)
    registry = Registry(settings.schema_registry_url)
    register_schemas(settings, registry)
    codec = Codec(registry)
    events_topic, prefs_topic = settings.topic("events"), settings.topic("preferences")

    tally: Counter = Counter()
    started = time.perf_counter()
    records = generate_events(codec, f"{events_topic}-value", events, users, seed, duplicate_share=duplicate_share, tally=tally)
    generate_s = time.perf_counter() - started
    prefs = generate_preferences(codec, f"{prefs_topic}-value", users, preferences_share, seed)
    priorities = {p: tally[f"priority:{p}"] for p, _ in PRIORITIES}
    types = {t: tally[f"type:{t}"] for t, _ in TYPES}
    say(f"generated {events:,} events over {users:,} users in {generate_s:.2f} s ({events / generate_s:,.0f} events/s): "
        + ", ".join(f"{p} {c / events:.1%}" for p, c in priorities.items())
        + f"; duplicates {tally['duplicates']:,} ({tally['duplicates'] / events:.1%}: {tally['resent_event_id']:,} re-sent "
          f"event_ids, {tally['repeated_dedup_key']:,} repeated dedup_keys); {len(prefs):,} preferences")

    prefs_figures = produce(settings.kafka_bootstrap, prefs_topic, prefs, progress=False)
    event_figures = produce(settings.kafka_bootstrap, events_topic, records, progress=progress)
    say(f"produced {events:,} events to {events_topic} in {event_figures['seconds']:.2f} s "
        f"({event_figures['records_per_s']:,.0f} events/s), {len(prefs):,} preferences to {prefs_topic}")
    if event_figures["errors"] or prefs_figures["errors"]:
        raise RuntimeError(f"{event_figures['errors'] + prefs_figures['errors']} records failed to produce")
    return {
        "topic_prefix": settings.topic_prefix, "events_topic": events_topic, "preferences_topic": prefs_topic,
        "partitions": settings.partitions, "seed": seed,
        "workload_events": events, "workload_users": users,
        "workload_originals": tally["originals"], "workload_duplicates": tally["duplicates"],
        "workload_resent_event_ids": tally["resent_event_id"], "workload_repeated_dedup_keys": tally["repeated_dedup_key"],
        "workload_priorities": priorities, "workload_types": types, "workload_preferences": len(prefs),
        "generate_s": round(generate_s, 3), "generate_events_per_s": round(events / generate_s, 1),
        "produce_s": event_figures["seconds"], "produce_events_per_s": event_figures["records_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1,000,000)")
    parser.add_argument("--users", type=int, default=100_000, help="distinct recipients (default 100,000)")
    parser.add_argument("--seed", type=int, default=1, help="the same seed makes the same workload (default 1)")
    parser.add_argument("--duplicate-share", type=float, default=0.10, help="share of records that repeat an earlier one")
    parser.add_argument("--preferences-share", type=float, default=0.20, help="share of users with a Preferences record")
    parser.add_argument("--prefix", default=None, help="topic prefix (default: a new benchXXXXXX.)")
    parser.add_argument("--delete", action="store_true", help="delete the topics afterwards (a dry run of generate + produce)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from herald.settings import Settings

    prefix = args.prefix or unique_prefix()
    settings = Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}pipeline")
    figures = run(args.events, args.users, args.seed, settings=settings, duplicate_share=args.duplicate_share,
                  preferences_share=args.preferences_share)
    if args.delete:
        delete_topics(settings.kafka_bootstrap, lambda t: t.startswith(prefix))
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
