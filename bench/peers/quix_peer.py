"""The peer: Herald's per-event job on the benchmark's workload, written with Quix Streams, to measure Herald against.

The job is Herald's for a user with no preference record (the benchmark's workload has none) who is
offline (it has no presence), from the same Avro bytes, keyed by user id, in Quix state (RocksDB, with
changelog topics, at-least-once):
1. decode the Avro value (Confluent wire format; the writer schema is fetched from the registry once
   per schema id and cached, as Herald's codec does);
2. dedup: the same ``(user_id, dedup_key or event_id)`` within the dedup window (5 min) is DEDUPLICATED;
3. channels by priority, as Herald routes an offline user: INAPP always; HIGH and CRITICAL also PUSH,
   SMS and EMAIL; NORMAL also PUSH and EMAIL; LOW also EMAIL;
4. each channel's part: at once (in-app, SMS, HIGH and CRITICAL, an event not batchable), in a batch
   (NORMAL on PUSH and EMAIL: a tumbling window per user, one request per channel and type at its end),
   or in the digest (LOW on EMAIL: a tumbling window of the digest period per user);
5. a part sent at once on PUSH, SMS or EMAIL counts against the user's limits on that channel (10 a
   minute, 100 an hour, 500 a day, fixed windows; CRITICAL exempt); over them it is THROTTLED and goes
   when the minute's window ends (a tumbling window of a minute);
6. one ``herald.DeliveryRequest`` (Avro) per part sent at once, to the channel's topic; one
   ``herald.Decision`` (Avro) per event on arrival (ROUTED, DEDUPLICATED, or the interim BATCHED,
   DIGESTED, THROTTLED) and a final one when its batch, digest or throttled part goes.

``decide`` is that rule as a pure function of the event, the clock and a state with ``get``/``set``;
``tests/bench/test_quix_peer.py`` holds it against Herald's policy event by event. Where the two still
differ: Herald also counts a released batch or digest against the limits (the peer only the parts sent at
once), and a part over the hour's or the day's limit waits for that window in Herald, a minute in the peer.

Time is the wall clock (a timestamp extractor), because Herald decides on its own clock too; so the
windows close while the benchmark runs, not at the end of the producer's timestamps.

events/s is the number of events decided over the time from the first decision handed to the producer
to the last one: the same "first to last output" measure as Herald's. The peer runs in a virtual
environment of its own (``bench.peers.venv``; Quix Streams pins an older confluent-kafka than Herald),
as a subprocess that prints one JSON line of figures. From Herald's environment:

    python -m bench.peers.quix_peer --events 200000          # makes its own workload first
    python -m bench.peers.quix_peer --source benchXXXXXX.events --events 1000000
    ...
    quix peer: 200,000 events in 29.10 s = 6,873 events/s (BATCHED 62,917, DEDUPLICATED 19,994, ROUTED 117,000, ...)
    {... "quix_events": 200000, "quix_seconds": 29.1, "quix_events_per_s": 6873.0, "quix_outputs": 200000, ...}

This file is both sides: ``run()`` (Herald's venv) starts ``python quix_peer.py --peer ...`` in the peer's
venv, where ``peer_main()`` runs. The peer side imports only the standard library, fastavro and quixstreams.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herald.settings import Settings

PEER_SCRIPT = Path(__file__).resolve()
CHANNELS = ("INAPP", "PUSH", "SMS", "EMAIL")  # the channels an offline user's events use, in Herald's order


# --- the rule: pure, standard library only -----------------------------------------------------------------

LIMITED = ("PUSH", "SMS", "EMAIL")  # the channels whose parts sent at once count against the limits
WINDOWS = (("m", 60_000), ("h", 3_600_000), ("d", 86_400_000))
MAX_BATCH = 50  # events in one batch or digest request at most


@dataclass(frozen=True)
class Rule:
    batch_window_ms: int = 30_000
    digest_window_ms: int = 10_000
    dedup_window_ms: int = 300_000
    limits: tuple[int, int, int] = (10, 100, 500)  # a minute, an hour, a day
    throttle_window_ms: int = 60_000


def delivery_id(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def placements(event: dict) -> list[tuple[str, str]]:
    """``(channel, "NOW" | "BATCH" | "DIGEST")`` for each part of an offline user's event, in channel order."""
    priority = event["priority"]
    if priority in ("CRITICAL", "HIGH"):
        return [(c, "NOW") for c in CHANNELS]
    held = event.get("batchable") is not False
    if priority == "NORMAL":
        return [("INAPP", "NOW"), ("PUSH", "BATCH" if held else "NOW"), ("EMAIL", "BATCH" if held else "NOW")]
    return [("INAPP", "NOW"), ("EMAIL", "DIGEST" if held else "NOW")]


def over_limit(counters: dict | None, now_ms: int, limits: tuple[int, int, int]) -> int | None:
    """None when one more send fits this minute, hour and day (fixed windows from the epoch), else when it would."""
    blocked = []
    for (name, size), cap in zip(WINDOWS, limits):
        start = now_ms - now_ms % size
        entry = (counters or {}).get(name)
        if entry and entry[0] >= start and entry[1] >= cap:
            blocked.append(entry[0] + size)
    return max(blocked) if blocked else None


def counted(counters: dict | None, now_ms: int) -> dict:
    out = {}
    for name, size in WINDOWS:
        start = now_ms - now_ms % size
        entry = (counters or {}).get(name)
        out[name] = [entry[0], entry[1] + 1] if entry and entry[0] >= start else [start, 1]
    return out


def request(event: dict, channel: str, kind: str, event_ids: list[str], title: str, body: str, now_ms: int,
            window: str = "") -> dict:
    return {"delivery_id": delivery_id(kind, channel, event["user_id"], window, *sorted(event_ids)),
            "user_id": event["user_id"], "channel": channel, "kind": kind, "event_ids": event_ids,
            "type": event["type"], "priority": event["priority"], "title": title, "body": body,
            "data": event.get("data") or {}, "created_at": now_ms}


def decision(event: dict, outcome: str, now_ms: int, reason: str, *, channels: list[str] | None = None,
             delivery: str | None = None, final: bool = True, release_at: int | None = None) -> dict:
    return {"event_id": event["event_id"], "user_id": event["user_id"], "outcome": outcome,
            "channels": channels or [], "delivery_id": delivery, "reason": reason, "at": now_ms, "final": final,
            "release_at": release_at}


def part(event: dict, channel: str) -> dict:
    """What a window keeps of a part: enough to write its request and its event's final decision."""
    return {"channel": channel, "event_id": event["event_id"], "user_id": event["user_id"], "type": event["type"],
            "priority": event["priority"], "title": event["title"], "body": event["body"]}


def decide(event: dict, now_ms: int, state: Any, rule: Rule) -> dict:
    """One event's outputs: ``out`` (decisions and the requests sent now, in order) and its parts for the
    ``batch``, ``digest`` and ``throttled`` windows. ``state`` has ``get(key)`` and ``set(key, value)``."""
    result: dict[str, list] = {"out": [], "batch": [], "digest": [], "throttled": []}
    seen_key = f"k:{event['dedup_key']}" if event.get("dedup_key") else f"id:{event['event_id']}"
    seen = state.get(seen_key)
    if seen is not None and now_ms < seen[1]:
        first = seen[0]
        reason = ("the same event_id was already accepted" if first == event["event_id"]
                  else f"same dedup_key as event {first} within the dedup window")
        result["out"].append(decision(event, "DEDUPLICATED", now_ms, reason))
        return result
    state.set(seen_key, [event["event_id"], now_ms + rule.dedup_window_ms])
    chosen = placements(event)
    rates = None
    sent: list[str] = []
    pending = {"BATCH": 0, "DIGEST": 0, "THROTTLED": 0}
    for channel, where in chosen:
        if where == "BATCH":
            result["batch"].append(part(event, channel))
        elif where == "DIGEST":
            result["digest"].append(part(event, channel))
        else:
            if channel in LIMITED:  # CRITICAL is never held back, but its sends count
                if rates is None:
                    rates = state.get("rates") or {}
                later = None if event["priority"] == "CRITICAL" else over_limit(rates.get(channel), now_ms, rule.limits)
                if later is not None:
                    result["throttled"].append(part(event, channel))
                    result["out"].append(decision(event, "THROTTLED", now_ms, f"{channel.lower()} is over the "
                                                  "user's rate limit", channels=[channel], final=False,
                                                  release_at=later))
                    pending["THROTTLED"] += 1
                    continue
                rates[channel] = counted(rates.get(channel), now_ms)
            one = request(event, channel, "SINGLE", [event["event_id"]], event["title"], event["body"], now_ms)
            result["out"].append(one)
            sent.append(one["delivery_id"])
            continue
        pending[where] += 1
    if rates is not None:
        state.set("rates", rates)
    channels = [c for c, _ in chosen]
    if pending["DIGEST"]:
        end = now_ms - now_ms % rule.digest_window_ms + rule.digest_window_ms
        result["out"].append(decision(event, "DIGESTED", now_ms, "waiting for the digest", channels=channels,
                                      final=False, release_at=end))
    elif pending["BATCH"]:
        end = now_ms - now_ms % rule.batch_window_ms + rule.batch_window_ms
        result["out"].append(decision(event, "BATCHED", now_ms, "waiting for a batch", channels=channels,
                                      final=False, release_at=end))
    elif not pending["THROTTLED"]:
        result["out"].append(decision(event, "ROUTED", now_ms, f"sent to {', '.join(c.lower() for c in channels)}",
                                      channels=channels, delivery=sent[-1] if sent else None))
    return result


def released(parts: list[dict], kind: str, outcome: str, start_ms: int, now_ms: int) -> list[dict]:
    """A window's parts at its end, as Herald releases a group: a batch is a request per channel and type of at
    most ``MAX_BATCH`` events (SINGLE when one), a digest one request per channel with all its events; then a
    final decision per event."""
    groups: dict[tuple, list[dict]] = {}
    for p in parts:
        groups.setdefault((p["channel"], p["type"] if kind == "BATCH" else None), []).append(p)
    out: list[dict] = []
    last: dict[str, str] = {}
    channels: dict[str, list[str]] = {}
    for (channel, type_), group in groups.items():
        size = len(group) if kind == "DIGEST" else MAX_BATCH
        for i in range(0, len(group), size):
            chunk = group[i:i + size]
            ids = [p["event_id"] for p in chunk]
            if len(chunk) == 1 and kind != "DIGEST":
                one = request(chunk[0], channel, "SINGLE", ids, chunk[0]["title"], chunk[0]["body"], now_ms)
            else:
                title = f"{len(chunk)} new notifications" + (f" ({type_})" if type_ else "")
                one = request({**chunk[0], "type": type_ or chunk[0]["type"]}, channel, kind, ids, title,
                              "\n".join(p["title"] for p in chunk[:10]), now_ms, window=f"{start_ms}:{i}")
            out.append(one)
            for p in chunk:
                last[p["event_id"]] = one["delivery_id"]
                channels.setdefault(p["event_id"], []).append(channel)
    firsts = {p["event_id"]: p for p in parts}
    out.extend(decision(p, outcome, now_ms, f"in a {kind.lower()} on {', '.join(channels[i])}".lower(),
                        channels=channels[i], delivery=last[i]) for i, p in firsts.items())
    return out


# --- the peer, inside the Quix venv ------------------------------------------------------------------------

def peer_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quix_peer.py --peer", description="Run the Quix Streams peer (in its venv).")
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True, help="Confluent-compatible registry URL")
    parser.add_argument("--source", required=True)
    parser.add_argument("--decisions", required=True)
    parser.add_argument("--requests", required=True, help="the delivery topics' prefix: <prefix><channel lowercase>")
    parser.add_argument("--decision-schema-id", type=int, required=True)
    parser.add_argument("--request-schema-id", type=int, required=True)
    parser.add_argument("--events", type=int, required=True, help="stop after this many events decided")
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--digest-s", type=float, default=10.0)
    parser.add_argument("--dedup-window-s", type=float, default=300.0)
    parser.add_argument("--rate-per-minute", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long in all")
    parser.add_argument("--idle-s", type=float, default=60.0, help="give up after this long without an event")
    parser.add_argument("--stop-file", default=None,
                        help="stop once this file exists (the driver's signal when several processes share the work)")
    parser.add_argument("--count-file", default=None, help="write the events decided so far here, every half second")
    args = parser.parse_args(argv)

    import io
    import os
    import threading
    import urllib.request

    _quiet_authlib()
    import fastavro
    import quixstreams
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer, Serializer

    schemas: dict[int, dict] = {}

    def schema(schema_id: int) -> dict:
        found = schemas.get(schema_id)
        if found is None:
            with urllib.request.urlopen(f"{args.registry.rstrip('/')}/schemas/ids/{schema_id}", timeout=10) as resp:
                found = schemas[schema_id] = fastavro.parse_schema(json.loads(json.loads(resp.read())["schema"]))
        return found

    class WireAvroDeserializer(Deserializer):
        """Avro in the Confluent wire format, with the writer's schema by id."""

        def __call__(self, value: bytes, ctx: Any) -> dict:
            buf = io.BytesIO(value)
            buf.seek(5)
            return fastavro.schemaless_reader(buf, schema(int.from_bytes(value[1:5], "big")), None)

    class WireAvroSerializer(Serializer):
        def __init__(self, schema_id: int) -> None:
            self.header = b"\x00" + schema_id.to_bytes(4, "big")
            self.schema = schema(schema_id)

        def __call__(self, value: dict, ctx: Any) -> bytes:
            buf = io.BytesIO()
            buf.write(self.header)
            fastavro.schemaless_writer(buf, self.schema, value)
            return buf.getvalue()

    rule = Rule(batch_window_ms=int(args.window_s * 1000), digest_window_ms=int(args.digest_s * 1000),
                dedup_window_ms=int(args.dedup_window_s * 1000), limits=(args.rate_per_minute, 100, 500))

    def wall_clock(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return int(time.time() * 1000)

    figures: dict[str, Any] = {"events": 0, "outcomes": {}, "released": 0}
    marks = {"first": 0.0, "last": 0.0, "seen": 0.0, "first_wall": 0.0, "last_wall": 0.0}
    outcomes: dict[str, int] = {}

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=args.state_dir, loglevel="WARNING", auto_create_topics=True)

    def count_event(out: list[dict]) -> None:
        n = figures["events"] = figures["events"] + 1
        first = next(o["outcome"] for o in out if "outcome" in o)
        outcomes[first] = outcomes.get(first, 0) + 1
        now = time.monotonic()
        marks["seen"], marks["last_wall"] = now, time.time()
        if n == 1:
            marks["first"], marks["first_wall"] = now, marks["last_wall"]
        if n >= args.events:
            marks["last"] = now
            app.stop()

    def count_released(record: dict) -> None:
        figures["released"] += 1

    source = app.topic(args.source, key_deserializer="str", value_deserializer=WireAvroDeserializer(),
                       timestamp_extractor=wall_clock)
    decisions = app.topic(args.decisions, key_serializer="str", value_serializer=WireAvroSerializer(args.decision_schema_id))
    by_channel = {c: app.topic(f"{args.requests}{c.lower()}", key_serializer="str",
                               value_serializer=WireAvroSerializer(args.request_schema_id)) for c in CHANNELS}

    def destination(value: dict, key: Any, timestamp: int, headers: Any) -> Any:
        return by_channel[value["channel"]] if "kind" in value else decisions

    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda event, key, now_ms, headers, state: decide(event, now_ms, state, rule),
                    stateful=True, metadata=True)
    (sdf.apply(lambda r: r["out"]).update(count_event)
        .apply(lambda out: out, expand=True).to_topic(destination))
    for name, kind, outcome, window_ms in (("batch", "BATCH", "BATCHED", rule.batch_window_ms),
                                           ("digest", "DIGEST", "DIGESTED", rule.digest_window_ms),
                                           ("throttled", "BATCH", "ROUTED", rule.throttle_window_ms)):
        (sdf.apply(lambda r, name=name: r[name]).filter(bool)
            .tumbling_window(window_ms).reduce(lambda parts, more: parts + more, lambda parts: list(parts))
            .final(closing_strategy="partition")
            .apply(lambda w, kind=kind, outcome=outcome: released(w["value"], kind, outcome, w["start"],
                                                                   int(time.time() * 1000)), expand=True)
            .update(count_released).to_topic(destination))

    started = time.monotonic()
    stopped = threading.Event()

    def watchdog() -> None:
        while not stopped.wait(0.5):
            if args.count_file:
                Path(args.count_file).write_text(str(figures["events"]))
            now = time.monotonic()
            idle_since = marks["seen"] or started
            if args.stop_file and os.path.exists(args.stop_file):
                app.stop()
                return
            if now - started > args.timeout_s or now - idle_since > args.idle_s:
                figures["gave_up"] = "timeout" if now - started > args.timeout_s else "idle"
                app.stop()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    app.run()
    stopped.set()
    done = time.monotonic()
    last = marks["last"] or marks["seen"]
    seconds = last - marks["first"] if marks["first"] else 0.0
    figures.update({
        "seconds": round(seconds, 3),
        "events_per_s": round(figures["events"] / seconds, 1) if seconds else 0.0,
        "outputs": figures["events"],
        "outcomes": outcomes,
        "startup_s": round(marks["first"] - started, 3) if marks["first"] else None,
        "shutdown_s": round(done - last, 3) if last else None,
        "complete": figures["events"] >= args.events,
        "first_wall": marks["first_wall"] or None, "last_wall": marks["last_wall"] or None,
        "quixstreams": quixstreams.__version__,
    })
    print(json.dumps(figures), flush=True)
    return 0 if figures["complete"] else 1


def _quiet_authlib() -> None:
    """Authlib (brought by confluent-kafka's schema registry extra) forces its deprecation warnings on, and
    warns about httpx when quixstreams imports it: filter that one warning, after Authlib's own filter."""
    import warnings

    try:
        import authlib.deprecate  # noqa: F401 - installs Authlib's "always" filter first
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")


# --- the driver, in Herald's venv --------------------------------------------------------------------------

def run(source_topic: str, events: int, *, settings: Settings | None = None, window_s: float = 30.0,
        digest_s: float = 10.0, dedup_window_s: float = 300.0, rate_per_minute: int = 10, timeout_s: float = 600.0,
        progress: bool = True, processes: int = 1) -> dict:
    """Run the Quix Streams peer over the first ``events`` records of ``source_topic`` (Herald's
    NotificationEvents), writing ``<source_topic>.quix.decisions`` and ``.quix.delivery.<channel>``; return its figures:
    ``quix_events``, ``quix_seconds``, ``quix_events_per_s``, ``quix_outputs`` (records in the decisions
    topic afterwards), ``quix_requests`` (records in its delivery topics, by channel), ``quix_released`` (records
    written at a window's end), ``quix_outcomes``, ``quix_startup_s``, ``quix_shutdown_s``,
    ``quix_complete``, ``quix_version``, ``quix_processes``, ``quix_group`` (its consumer group, which also
    names its changelog topics). ``settings`` (Herald's) gives the broker and registry addresses.

    ``processes`` peers share the work as one consumer group, as Quix Streams scales (the same count as
    Herald's workers makes the comparison one of equals): each runs until the decisions topic holds
    ``events`` records, and the rate is all their decisions over the time from the first decision any of
    them made to the last."""
    import shutil
    import subprocess
    import tempfile
    import uuid

    from bench.peers.venv import ensure_venv, python_of
    from bench.workload import create_topics, end_offsets_total, partitions_of
    from herald.settings import Settings
    from infra.common import subdir
    from schemas.registry import Registry

    settings = settings or Settings.from_env()
    python = python_of(ensure_venv(progress=progress))
    decisions, requests = f"{source_topic}.quix.decisions", f"{source_topic}.quix.delivery."
    request_topics = {c: f"{requests}{c.lower()}" for c in CHANNELS}
    create_topics(settings.kafka_bootstrap, [decisions, *request_topics.values()],
                  partitions_of(settings.kafka_bootstrap, source_topic))
    registry = Registry(settings.schema_registry_url)
    decision_id = registry.register(f"{decisions}-value", "Decision")
    request_id = [registry.register(f"{t}-value", "DeliveryRequest") for t in request_topics.values()][0]
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    work_dir = Path(tempfile.mkdtemp(prefix=f"{group}-", dir=subdir("bench")))
    stop_file = work_dir / "stop"
    processes = max(1, processes)

    def command(i: int) -> list[str]:
        return [str(python), str(PEER_SCRIPT), "--peer", "--bootstrap", settings.kafka_bootstrap,
                "--registry", settings.schema_registry_url, "--source", source_topic, "--decisions", decisions,
                "--requests", requests, "--decision-schema-id", str(decision_id), "--request-schema-id", str(request_id),
                "--events", str(events), "--group", group, "--state-dir", str(work_dir / f"state-{i}"),
                "--window-s", str(window_s), "--digest-s", str(digest_s), "--dedup-window-s", str(dedup_window_s),
                "--rate-per-minute", str(rate_per_minute), "--timeout-s", str(timeout_s),
                *(["--stop-file", str(stop_file), "--count-file", str(work_dir / f"count-{i}")] if processes > 1 else [])]

    def decided() -> int:
        return sum(int(f.read_text() or 0) for f in work_dir.glob("count-*"))

    if progress:
        print(f"quix peer: {events:,} events from {source_topic} (group {group}, {processes} process(es))",
              file=sys.stderr, flush=True)
    procs = []
    try:
        for i in range(processes):
            procs.append(subprocess.Popen(command(i), stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE,
                                          text=True))
        deadline = time.monotonic() + timeout_s + 120
        while processes > 1 and any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if decided() >= events:
                stop_file.touch()  # every event decided: each peer stops at its next look
                break
            time.sleep(0.5)
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work_dir, ignore_errors=True)
    peers = []
    for p, (out, err) in zip(procs, outputs):
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"a Quix peer printed no figures (exit code {p.returncode}): {(err or out or '')[-2000:]}")
        peers.append(json.loads(lines[-1]))
    peer = peers[0] if processes == 1 else _combined(peers)
    figures = {f"quix_{k}": v for k, v in peer.items() if k not in ("quixstreams", "first_wall", "last_wall")}
    figures["quix_outputs"] = end_offsets_total(settings.kafka_bootstrap, decisions)
    figures["quix_complete"] = peer["events"] >= events and (peer["complete"] or processes > 1)
    figures.update({"quix_version": peer["quixstreams"], "quix_group": group, "quix_decisions_topic": decisions,
                    "quix_requests": {c: end_offsets_total(settings.kafka_bootstrap, t) for c, t in request_topics.items()},
                    "quix_processes": processes})
    if progress:
        print(f"quix peer: {peer['events']:,} events in {peer['seconds']:.2f} s = {peer['events_per_s']:,.0f} events/s "
              f"({', '.join(f'{k} {v:,}' for k, v in sorted(peer['outcomes'].items()))}; {peer['released']:,} records at windows' ends)",
              file=sys.stderr, flush=True)
    return figures


def _combined(peers: list[dict]) -> dict:
    """The figures of several peer processes as one: their events, outcomes and batches added up, the time
    from the first decision any made to the last (wall clock: the processes share no monotonic clock)."""
    firsts = [p["first_wall"] for p in peers if p.get("first_wall")]
    lasts = [p["last_wall"] for p in peers if p.get("last_wall")]
    seconds = max(lasts) - min(firsts) if firsts and lasts else 0.0
    events = sum(p["events"] for p in peers)
    outcomes: dict[str, int] = {}
    for p in peers:
        for k, v in p["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    startups = [p["startup_s"] for p in peers if p.get("startup_s") is not None]
    shutdowns = [p["shutdown_s"] for p in peers if p.get("shutdown_s") is not None]
    return {"events": events, "outcomes": outcomes, "released": sum(p["released"] for p in peers),
            "seconds": round(seconds, 3), "events_per_s": round(events / seconds, 1) if seconds else 0.0,
            "outputs": events, "startup_s": min(startups) if startups else None,
            "shutdown_s": max(shutdowns) if shutdowns else None, "complete": all(p["complete"] for p in peers),
            "quixstreams": peers[0]["quixstreams"],
            **({"gave_up": g} if (g := next((p["gave_up"] for p in peers if p.get("gave_up")), None)) else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.quix_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to decide (default 200,000)")
    parser.add_argument("--users", type=int, default=None, help="users of a generated workload (default events / 10)")
    parser.add_argument("--source", default=None, help="an existing topic of NotificationEvents holding at least --events "
                                                       "records (default: generate and produce a workload first)")
    parser.add_argument("--window-s", type=float, default=30.0, help="batch window, seconds (default 30)")
    parser.add_argument("--digest-s", type=float, default=10.0, help="digest period, seconds (default 10)")
    parser.add_argument("--dedup-window-s", type=float, default=300.0, help="dedup window, seconds (default 300)")
    parser.add_argument("--rate-per-minute", type=int, default=10, help="per-user sends a minute before THROTTLED (default 10)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long (default 600)")
    parser.add_argument("--processes", type=int, default=1,
                        help="peer processes sharing the work in one consumer group (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the topics this command created")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from bench import workload
    from herald.settings import Settings

    figures: dict = {}
    prefix = None
    source = args.source
    bootstrap = Settings.from_env().kafka_bootstrap
    if source is None:
        prefix = workload.unique_prefix()
        settings = Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}pipeline")
        figures.update(workload.run(args.events, args.users or max(1, args.events // 10), settings=settings,
                                    preferences_share=0.0))  # the peer's job is for users without one
        source = figures["events_topic"]
    try:
        figures.update(run(source, args.events, window_s=args.window_s, digest_s=args.digest_s,
                           dedup_window_s=args.dedup_window_s,
                           rate_per_minute=args.rate_per_minute, timeout_s=args.timeout_s,
                           processes=args.processes))
    finally:
        if not args.keep:
            group = figures.get("quix_group")
            workload.delete_topics(bootstrap, lambda t: bool(prefix and t.startswith(prefix))
                                   or bool(group and group in t) or (args.source is not None and t.startswith(f"{args.source}.quix.")))
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if figures.get("quix_complete") else 1


if __name__ == "__main__":
    if "--peer" in sys.argv[1:]:
        sys.exit(peer_main(sys.argv[1:]))
    sys.exit(main())
