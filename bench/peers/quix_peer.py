"""The peer: Herald's core per-event logic written with Quix Streams, to measure Herald against.

Per event, keyed by user id, in Quix state (RocksDB, with changelog topics, at-least-once):
1. decode the Avro value (Confluent wire format; the writer schema is fetched from the registry once
   per schema id and cached, as Herald's codec does);
2. dedup: the same ``(user_id, dedup_key or event_id)`` within the dedup window (5 min) is DEDUPLICATED
   (a state entry per key, with Quix's event-time TTL);
3. NORMAL events that are batchable join a tumbling window per user (30 s), counted by type, and are
   BATCHED; when a window closes, one ``herald.DeliveryRequest`` (kind BATCH) per user and type goes
   to the batches topic (``final(closing_strategy="partition")``: every user's window closes when the
   partition's clock passes its end, as Herald's ticks release batches);
4. the rest count against a per-user count per minute in state: over the limit (10) and not CRITICAL is
   THROTTLED, else ROUTED;
and one ``herald.Decision`` per event, Avro in the wire format, to the decisions topic.

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
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herald.settings import Settings

PEER_SCRIPT = Path(__file__).resolve()


# --- the peer, inside the Quix venv ------------------------------------------------------------------------

def peer_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quix_peer.py --peer", description="Run the Quix Streams peer (in its venv).")
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True, help="Confluent-compatible registry URL")
    parser.add_argument("--source", required=True)
    parser.add_argument("--decisions", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--decision-schema-id", type=int, required=True)
    parser.add_argument("--batch-schema-id", type=int, required=True)
    parser.add_argument("--events", type=int, required=True, help="stop after this many decisions")
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--dedup-window-s", type=float, default=300.0)
    parser.add_argument("--rate-per-minute", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long in all")
    parser.add_argument("--idle-s", type=float, default=60.0, help="give up after this long without an event")
    parser.add_argument("--stop-file", default=None,
                        help="stop once this file exists (the driver's signal when several processes share the work)")
    args = parser.parse_args(argv)

    import hashlib
    import io
    import os
    import threading
    import urllib.request
    from datetime import timedelta

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

    window_ms = int(args.window_s * 1000)
    dedup_ttl = timedelta(seconds=args.dedup_window_s)
    limit = args.rate_per_minute

    def wall_clock(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return int(time.time() * 1000)

    def delivery_id(*parts: str) -> str:
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()

    def decide(event: dict, key: str, now_ms: int, headers: Any, state: Any) -> dict:
        dedup = event["dedup_key"]
        seen_key = f"k:{dedup}" if dedup else f"i:{event['event_id']}"
        decision = {"event_id": event["event_id"], "user_id": event["user_id"], "type": event["type"],
                    "priority": event["priority"], "channels": [], "delivery_id": None, "at": now_ms,
                    "final": True, "release_at": None}
        if state.get(seen_key) is not None:
            decision["outcome"], decision["reason"] = "DEDUPLICATED", "seen within the dedup window"
            return decision
        state.set(seen_key, now_ms, ttl=dedup_ttl)
        if event["priority"] == "NORMAL" and event["batchable"]:
            decision["outcome"], decision["reason"], decision["final"] = "BATCHED", "joins the open batch", False
            decision["release_at"] = now_ms - now_ms % window_ms + window_ms
            return decision
        minute = now_ms // 60_000
        rate = state.get("rate")
        count = rate[1] + 1 if rate is not None and rate[0] == minute else 1
        state.set("rate", [minute, count])
        if count > limit and event["priority"] != "CRITICAL":
            decision["outcome"], decision["reason"] = "THROTTLED", f"over {limit} a minute"
            decision["release_at"] = (minute + 1) * 60_000
            decision["final"] = False
        else:
            decision["outcome"], decision["reason"] = "ROUTED", "sent now"
            decision["channels"] = ["INAPP"]
            decision["delivery_id"] = delivery_id(event["event_id"], "INAPP")
        return decision

    def start_batch(decision: dict) -> dict:
        return {decision["type"]: [decision["event_id"]]}

    def add_to_batch(batch: dict, decision: dict) -> dict:
        batch.setdefault(decision["type"], []).append(decision["event_id"])
        return batch

    def batch_requests(window: dict, key: str, timestamp: int, headers: Any) -> list[dict]:
        now_ms = int(time.time() * 1000)
        return [{"delivery_id": delivery_id(key, type_, str(window["start"])), "user_id": key, "channel": "INAPP",
                 "kind": "BATCH", "event_ids": ids, "type": type_, "priority": "NORMAL",
                 "title": f"{len(ids)} new notifications ({type_})", "body": "",
                 "data": {}, "created_at": now_ms}
                for type_, ids in window["value"].items()]

    figures: dict[str, Any] = {"events": 0, "outcomes": {}, "batches": 0}
    marks = {"first": 0.0, "last": 0.0, "seen": 0.0, "first_wall": 0.0, "last_wall": 0.0}
    outcomes: dict[str, int] = {}

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=args.state_dir, loglevel="WARNING", auto_create_topics=True)

    def counted(decision: dict) -> None:
        n = figures["events"] = figures["events"] + 1
        outcomes[decision["outcome"]] = outcomes.get(decision["outcome"], 0) + 1
        now = time.monotonic()
        marks["seen"], marks["last_wall"] = now, time.time()
        if n == 1:
            marks["first"], marks["first_wall"] = now, marks["last_wall"]
        if n >= args.events:
            marks["last"] = now
            app.stop()

    def counted_batch(request: dict) -> None:
        figures["batches"] += 1

    source = app.topic(args.source, key_deserializer="str", value_deserializer=WireAvroDeserializer(),
                       timestamp_extractor=wall_clock)
    decisions = app.topic(args.decisions, key_serializer="str", value_serializer=WireAvroSerializer(args.decision_schema_id))
    batches = app.topic(args.batches, key_serializer="str", value_serializer=WireAvroSerializer(args.batch_schema_id))

    sdf = app.dataframe(source)
    sdf = sdf.apply(decide, stateful=True, metadata=True)
    sdf.to_topic(decisions).update(counted)
    (sdf.filter(lambda d: d["outcome"] == "BATCHED")
        .tumbling_window(window_ms).reduce(add_to_batch, start_batch).final(closing_strategy="partition")
        .apply(batch_requests, metadata=True, expand=True)
        .to_topic(batches).update(counted_batch))

    started = time.monotonic()
    stopped = threading.Event()

    def watchdog() -> None:
        while not stopped.wait(0.5):
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
        dedup_window_s: float = 300.0, rate_per_minute: int = 10, timeout_s: float = 600.0,
        progress: bool = True, processes: int = 1) -> dict:
    """Run the Quix Streams peer over the first ``events`` records of ``source_topic`` (Herald's
    NotificationEvents), writing ``<source_topic>.quix.decisions`` and ``.quix.batches``; return its figures:
    ``quix_events``, ``quix_seconds``, ``quix_events_per_s``, ``quix_outputs`` (records in the decisions
    topic afterwards), ``quix_batches``, ``quix_outcomes``, ``quix_startup_s``, ``quix_shutdown_s``,
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
    decisions, batches = f"{source_topic}.quix.decisions", f"{source_topic}.quix.batches"
    create_topics(settings.kafka_bootstrap, [decisions, batches], partitions_of(settings.kafka_bootstrap, source_topic))
    registry = Registry(settings.schema_registry_url)
    decision_id = registry.register(f"{decisions}-value", "Decision")
    batch_id = registry.register(f"{batches}-value", "DeliveryRequest")
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    work_dir = Path(tempfile.mkdtemp(prefix=f"{group}-", dir=subdir("bench")))
    stop_file = work_dir / "stop"
    processes = max(1, processes)

    def command(i: int) -> list[str]:
        return [str(python), str(PEER_SCRIPT), "--peer", "--bootstrap", settings.kafka_bootstrap,
                "--registry", settings.schema_registry_url, "--source", source_topic, "--decisions", decisions,
                "--batches", batches, "--decision-schema-id", str(decision_id), "--batch-schema-id", str(batch_id),
                "--events", str(events), "--group", group, "--state-dir", str(work_dir / f"state-{i}"),
                "--window-s", str(window_s), "--dedup-window-s", str(dedup_window_s),
                "--rate-per-minute", str(rate_per_minute), "--timeout-s", str(timeout_s),
                *(["--stop-file", str(stop_file)] if processes > 1 else [])]

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
            if end_offsets_total(settings.kafka_bootstrap, decisions) >= events:
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
    figures["quix_complete"] = figures["quix_outputs"] >= events and (peer["complete"] or processes > 1)
    figures.update({"quix_version": peer["quixstreams"], "quix_group": group, "quix_decisions_topic": decisions,
                    "quix_batches_topic": batches, "quix_processes": processes})
    if progress:
        print(f"quix peer: {peer['events']:,} events in {peer['seconds']:.2f} s = {peer['events_per_s']:,.0f} events/s "
              f"({', '.join(f'{k} {v:,}' for k, v in sorted(peer['outcomes'].items()))}; {peer['batches']:,} batches)",
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
    return {"events": events, "outcomes": outcomes, "batches": sum(p["batches"] for p in peers),
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
        figures.update(workload.run(args.events, args.users or max(1, args.events // 10), settings=settings))
        source = figures["events_topic"]
    try:
        figures.update(run(source, args.events, window_s=args.window_s, dedup_window_s=args.dedup_window_s,
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
