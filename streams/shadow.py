"""``herald replay --shadow``: a what-if run of the pipeline on a range of past events, compared with what
the live pipeline decided.

The run (``run``):
- A run id names everything the run makes: topics under ``<prefix>shadow.<run id>.``, the Faust app id
  ``<app id>-shadow-<run id>`` (its consumer group, ticks and changelog topics) and a data folder under the
  state folder's ``shadow/<run id>``. Nothing it makes shares a name with the live pipeline's.
- The worker is the real one (``herald worker`` in a subprocess) with the live settings, then the
  ``--set NAME=VALUE`` overrides (any ``HERALD_*`` setting; the names and prefix above cannot be set).
  No sink is started: its delivery requests stay in its own delivery topics, and nothing reaches a user.
- Before the events, the worker is given what the policy reads besides them: the live preferences
  written up to the end of the range (the compacted topic's history, in order) and the presence records
  of the range and the presence TTL before it; the events are copied once the worker has read all of them.
- The range of the events topic is copied byte for byte with keys, headers and timestamps: the worker
  decides each event on its record's timestamp, as the live one did. Its state starts empty: dedup keys,
  rate counts and open batches from before ``--from`` are not known to it.
- The run waits until every copied event is settled: it has a final decision, or its latest decision is
  interim with a ``release_at`` after now. Those are "still held" (a digest, quiet hours, a schedule or a
  rate limit that ends after the run); anything due before now is released by the worker's clock, which
  runs on the wall clock, before the run ends. A record that does not decode is not an event of the run.
- Then the worker stops and the run's topics, consumer group and data folder are deleted (not with
  ``keep``). Its value subjects stay in the schema registry: they name no live topic, and deleting a
  subject may take a schema the live subjects share with it.

The comparison (``compare``, pure): an event's fate on each side is the outcome of its first final
decision, or ``STILL_HELD`` with the interim outcome when it has none, or ``UNDECIDED`` when it has no decision
at all; delivered fates also say how many events went out with it on its channels (``alone`` or ``with N
others``), so a batch that grows under a longer window shows as a change. Notifications are the distinct
``delivery_id``s of the delivery requests that carry at least one event of the range, per user and channel.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from herald.settings import Settings
from streams import replay
from streams.replay import Position, ReplayError

FIXED = ("HERALD_TOPIC_PREFIX", "HERALD_APP_ID", "HERALD_DATA_DIR", "HERALD_KAFKA_BOOTSTRAP")
DELIVERED = ("ROUTED", "BATCHED", "DIGESTED")
Tick = Callable[[int, int], None]  # (settled, total)


# -- the comparison --------------------------------------------------------------------------------

@dataclass
class Report:
    events: int
    outcomes: dict[str, Counter]                        # side -> fate's outcome -> events
    notifications: list[dict]                           # user_id, channel, live, shadow
    changed: list[dict]                                 # event_id, user_id, live, shadow
    fates: dict[str, dict[str, str]]                    # event_id -> side -> fate
    users: dict[str, str] = field(default_factory=dict)  # event_id -> user_id

    def channels(self) -> dict[str, dict[str, int]]:
        """Notifications per channel over every user: {channel: {"live": n, "shadow": n}}."""
        out: dict[str, dict[str, int]] = {}
        for row in self.notifications:
            totals = out.setdefault(row["channel"], {"live": 0, "shadow": 0})
            totals["live"] += row["live"]
            totals["shadow"] += row["shadow"]
        return dict(sorted(out.items()))

    def as_json(self, meta: dict) -> dict:
        return {**meta, "events": self.events,
                "outcomes": {side: dict(sorted(c.items())) for side, c in self.outcomes.items()},
                "channels": self.channels(), "notifications": self.notifications, "changed": self.changed}


def _companions(requests: Iterable[dict], event_ids: set[str]) -> tuple[dict[str, int], dict[tuple[str, str], set]]:
    """(event_id -> most events in one of its deliveries, (user, channel) -> delivery_ids with events of the range)."""
    most: dict[str, int] = {}
    sent: dict[tuple[str, str], set] = defaultdict(set)
    for r in requests:
        ids = set(r["event_ids"])
        if not ids & event_ids:
            continue
        sent[(r["user_id"], r["channel"])].add(r["delivery_id"])
        for e in ids & event_ids:
            most[e] = max(most.get(e, 0), len(ids))
    return most, sent


def fate(decisions: list[dict], with_events: int) -> str:
    """One event's fate from its decisions in the order written (see the module's rules)."""
    finals = [d for d in decisions if d.get("final", True)]
    if finals:
        outcome = finals[0]["outcome"]
        if outcome in DELIVERED and with_events:
            others = with_events - 1
            return f"{outcome}, " + ("alone" if others < 1 else f"with {others} other" + "s" * (others > 1))
        return outcome
    if decisions:
        return f"STILL_HELD ({decisions[-1]['outcome']})"
    return "UNDECIDED"


def compare(event_ids: dict[str, str], live: list[dict], shadow: list[dict], live_requests: list[dict],
            shadow_requests: list[dict]) -> Report:
    """Compare the two sides' decisions and delivery requests for ``event_ids`` (event_id -> user_id);
    decisions and requests of other events are ignored."""
    ids = set(event_ids)
    fates: dict[str, dict[str, str]] = {e: {} for e in event_ids}
    outcomes: dict[str, Counter] = {}
    sends = {}
    for side, decisions, requests in (("live", live, live_requests), ("shadow", shadow, shadow_requests)):
        by_event: dict[str, list[dict]] = defaultdict(list)
        for d in decisions:
            if d["event_id"] in ids:
                by_event[d["event_id"]].append(d)
        most, sends[side] = _companions(requests, ids)
        for e in event_ids:
            fates[e][side] = fate(by_event.get(e, []), most.get(e, 0))
        outcomes[side] = Counter(f.split(",")[0].split(" (")[0] for f in (fates[e][side] for e in event_ids))
    keys = sorted(set(sends["live"]) | set(sends["shadow"]))
    notifications = [{"user_id": u, "channel": c, "live": len(sends["live"].get((u, c), ())),
                      "shadow": len(sends["shadow"].get((u, c), ()))} for u, c in keys]
    changed = [{"event_id": e, "user_id": event_ids[e], "live": f["live"], "shadow": f["shadow"]}
               for e, f in sorted(fates.items(), key=lambda kv: (event_ids[kv[0]], kv[0])) if f["live"] != f["shadow"]]
    return Report(len(event_ids), outcomes, notifications, changed, fates, dict(event_ids))


def write_files(report: Report, meta: dict, folder: Path, run_id: str) -> tuple[Path, Path]:
    """``<folder>/<run id>.json`` (everything) and ``<run id>.csv`` (one row per event: its fate on each side)."""
    folder.mkdir(parents=True, exist_ok=True)
    js, cs = folder / f"shadow-{run_id}.json", folder / f"shadow-{run_id}.csv"
    js.write_text(json.dumps(report.as_json(meta), indent=2) + "\n")
    with open(cs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "user_id", "live", "shadow", "changed"])
        for e, sides in sorted(report.fates.items(), key=lambda kv: (report.users.get(kv[0], ""), kv[0])):
            w.writerow([e, report.users.get(e, ""), sides["live"], sides["shadow"], int(sides["live"] != sides["shadow"])])
    return js, cs


def render(report: Report, console: Any, limit: int = 20) -> None:
    """The report as rich tables: outcomes, notifications per channel, per user and channel (the largest
    changes first), and the changed events (the first ``limit`` rows of the long ones)."""
    from rich.table import Table

    t = Table(title=f"decisions of {report.events} events")
    t.add_column("outcome")
    t.add_column("live", justify="right")
    t.add_column("shadow", justify="right")
    for o in sorted(set(report.outcomes["live"]) | set(report.outcomes["shadow"])):
        t.add_row(o, str(report.outcomes["live"][o]), str(report.outcomes["shadow"][o]))
    console.print(t)
    ch = Table(title="notifications per channel")
    for col in ("channel", "live", "shadow", "change"):
        ch.add_column(col, justify="left" if col == "channel" else "right")
    for channel, totals in report.channels().items():
        ch.add_row(channel, str(totals["live"]), str(totals["shadow"]), f"{totals['shadow'] - totals['live']:+d}")
    console.print(ch)
    n = Table(title="notifications per user and channel" + (f" (the {limit} largest changes)"
                                                              if len(report.notifications) > limit else ""))
    for col in ("user", "channel", "live", "shadow", "change"):
        n.add_column(col, justify="right" if col in ("live", "shadow", "change") else "left")
    for row in sorted(report.notifications, key=lambda r: -abs(r["shadow"] - r["live"]))[:limit]:
        n.add_row(row["user_id"], row["channel"], str(row["live"]), str(row["shadow"]), f"{row['shadow'] - row['live']:+d}")
    console.print(n)
    if len(report.notifications) > limit:
        console.print(f"... and {len(report.notifications) - limit} more rows in the CSV and JSON files")
    c = Table(title=f"{len(report.changed)} events whose fate changed")
    for col in ("event", "user", "live", "shadow"):
        c.add_column(col)
    for row in report.changed[:limit]:
        c.add_row(row["event_id"], row["user_id"], row["live"], row["shadow"])
    console.print(c)
    if len(report.changed) > limit:
        console.print(f"... and {len(report.changed) - limit} more in the CSV and JSON files")


# -- settings of a run -----------------------------------------------------------------------------

def overrides(pairs: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` as {env name: value}; raises ReplayError for an unknown or fixed name or a value
    its setting cannot take."""
    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().upper()
        if not sep:
            raise ReplayError(f"--set {pair!r}: write NAME=VALUE, e.g. HERALD_BATCH_WINDOW_S=300")
        if name not in by_env:
            raise ReplayError(f"--set {name}: no such setting (`herald --help` lists them)")
        if name in FIXED:
            raise ReplayError(f"--set {name}: a shadow run sets it itself")
        try:
            type(by_env[name].default)(value)
        except ValueError:
            raise ReplayError(f"--set {name}={value!r}: not a {type(by_env[name].default).__name__}") from None
        out[name] = value
    return out


def shadow_names(settings: Settings, run_id: str) -> dict[str, str]:
    from herald import paths

    return {"HERALD_TOPIC_PREFIX": f"{settings.topic_prefix}shadow.{run_id}.",
            "HERALD_APP_ID": f"{settings.app_id}-shadow-{run_id}",
            "HERALD_DATA_DIR": str(paths.subdir("shadow", run_id))}


def shadow_settings(settings: Settings, names: dict[str, str], sets: dict[str, str]) -> Settings:
    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    values = {by_env[k].name: type(by_env[k].default)(v) for k, v in {**sets, **names}.items()}
    return dataclasses.replace(settings, **values)


# -- Kafka -----------------------------------------------------------------------------------------

def _consumer(settings: Settings) -> Any:
    return replay.consumer_for(settings)


def _read_all(settings: Settings, topic: str, schema: str, since_ms: int | None, codec: Any) -> list[dict]:
    """Every record of ``topic`` written since ``since_ms`` (None: all) up to its end now, decoded."""
    from schemas.codec import DecodeError

    consumer, out = _consumer(settings), []
    try:
        spans = replay.plan(consumer, topic, Position(ms=since_ms) if since_ms is not None else None, None)
        for msg in replay.read(consumer, topic, spans):
            try:
                out.append(codec.decode(msg.value(), schema))
            except DecodeError:
                pass
    finally:
        consumer.close()
    return out


def _copy(settings: Settings, source: str, dest: str, start: Position | None, end: Position | None,
          codec: Any = None, on_plan: Callable[[int], None] = lambda n: None,
          tick: Callable[[int], None] = lambda n: None) -> dict[str, str]:
    """Copy a range as ``replay.replay`` does; with ``codec``, return the copied events' {event_id: user_id}."""
    from schemas.codec import DecodeError

    consumer, sender = _consumer(settings), replay.Sender(settings)
    events: dict[str, str] = {}
    n = 0
    try:
        spans = replay.plan(consumer, source, start, end)
        on_plan(sum(s.stop - s.first for s in spans))
        for msg in replay.read(consumer, source, spans):
            kind, ts = msg.timestamp()
            sender.send(dest, msg.value(), msg.key(), msg.headers(), ts if kind and ts > 0 else None)
            n += 1
            tick(n)
            if codec is not None:
                try:
                    record = codec.decode(msg.value(), "NotificationEvent", max_bytes=1 << 30)
                    events[record["event_id"]] = record["user_id"]
                except (DecodeError, KeyError, TypeError):
                    pass
    finally:
        consumer.close()
    sender.finish()
    return events


def caught_up(settings: Settings, group: str, topics: list[str]) -> bool:
    """``group`` has committed the end of every partition of ``topics`` that holds records."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        wanted = []
        for t in topics:
            for p in range(settings.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if high > low:
                    wanted.append((TopicPartition(t, p), high))
        if not wanted:
            return True
        from confluent_kafka import Consumer

        from herald.kafka import client_config

        probe = Consumer({**client_config(settings), "group.id": group, "enable.auto.commit": False})
        try:
            got = probe.committed([tp for tp, _ in wanted], timeout=10)
        finally:
            probe.close()
        return all(c.offset >= high for c, (_, high) in zip(got, wanted))
    finally:
        consumer.close()


class Worker:
    """``herald worker`` in a subprocess with the run's environment; its log in the run's data folder."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReplayError(f"the shadow worker exited with {self.proc.returncode}; its log: {self.log}")
            if "Ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise ReplayError(f"the shadow worker was not ready in {timeout:g} s; its log: {self.log}")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise ReplayError(f"the shadow worker exited with {self.proc.returncode}; its log: {self.log}")

    def stop(self) -> None:
        from infra.common import stop_group

        stop_group(self.proc, 30)


class Decisions:
    """The shadow decisions topic read from the beginning as it fills, by a consumer without a group."""

    def __init__(self, settings: Settings, codec: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.codec, self.records = codec, []
        self.consumer = _consumer(settings)
        topic = settings.topic("decisions")
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])

    def poll(self) -> None:
        from schemas.codec import DecodeError

        for msg in self.consumer.consume(1000, 0.5):
            if msg.error():
                continue
            try:
                self.records.append(self.codec.decode(msg.value(), "Decision"))
            except DecodeError:
                pass

    def close(self) -> None:
        self.consumer.close()


def settled(event_ids: Iterable[str], decisions: list[dict], now_ms: int) -> int:
    """How many of ``event_ids`` are settled at ``now_ms``: a final decision, or an interim one due after now."""
    from agents.validate import to_ms

    latest: dict[str, dict] = {}
    final: set[str] = set()
    for d in decisions:
        latest[d["event_id"]] = d
        if d.get("final", True):
            final.add(d["event_id"])
    n = 0
    for e in event_ids:
        d = latest.get(e)
        if e in final or (d is not None and d.get("release_at") is not None and to_ms(d["release_at"]) > now_ms):
            n += 1
    return n


def delete(settings: Settings, shadow: Settings) -> list[str]:
    """Delete the run's topics and consumer group; the topic names deleted."""
    from confluent_kafka.admin import AdminClient

    from herald.kafka import client_config

    admin = AdminClient(client_config(settings))
    names = [t for t in admin.list_topics(timeout=10).topics
             if t.startswith(shadow.topic_prefix) or t.startswith(f"{shadow.app_id}-")]
    for future in (admin.delete_topics(names, operation_timeout=30).values() if names else ()):
        try:
            future.result(30)
        except Exception:  # noqa: BLE001 - one left behind is named by `herald status`; the rest still go
            pass
    from herald.topics import pipeline_group

    for group in (shadow.app_id, pipeline_group(shadow)):
        try:
            for future in admin.delete_consumer_groups([group], request_timeout=30).values():
                future.result(30)
        except Exception:  # noqa: BLE001 - a group that never committed does not exist: nothing to delete
            pass
    return names


@dataclass
class Run:
    run_id: str
    shadow: Settings
    events: dict[str, str]
    report: Report
    meta: dict
    deleted: list[str]


def run(settings: Settings, start: Position | None, end: Position | None, sets: dict[str, str], keep: bool = False,
        timeout: float = 600, on_phase: Callable[[str, int | None], None] = lambda what, total: None,
        tick: Callable[[int], None] = lambda n: None, run_id: str | None = None) -> Run:
    """The what-if run (see the module's rules); ``on_phase(what, total)`` and ``tick(done)`` drive a progress bar."""
    from herald.topics import ensure_topics, register_schemas
    from schemas.codec import Codec
    from schemas.registry import Registry

    run_id = run_id or uuid.uuid4().hex[:8]
    names = shadow_names(settings, run_id)
    shadow = shadow_settings(settings, names, sets)
    codec = Codec(Registry.from_settings(settings))
    ensure_topics(shadow)
    register_schemas(shadow)
    env = {**os.environ, **sets, **names, "HERALD_WORKER_METRICS_PORT": "-1", "HERALD_STANDBY_REPLICAS": "0",
           "PYTHONUNBUFFERED": "1"}
    worker = Worker(env, Path(names["HERALD_DATA_DIR"]) / "worker.log")
    started = int(time.time() * 1000)
    deleted: list[str] = []
    try:
        on_phase("starting the shadow worker", None)
        worker.wait_ready(120)
        # a range given in offsets has no time: then every preference and presence record up to now
        time_end = Position(ms=end.ms) if end is not None and end.ms is not None else None
        on_phase("copying preferences and presence", None)
        _copy(settings, settings.topic("preferences"), shadow.topic("preferences"), None, time_end)
        since_presence = start.ms - settings.presence_ttl_s * 1000 if start is not None and start.ms is not None else None
        _copy(settings, settings.topic("presence"), shadow.topic("presence"),
              Position(ms=since_presence) if since_presence is not None else None, time_end)
        deadline = time.monotonic() + timeout
        while not caught_up(shadow, shadow.app_id, [shadow.topic("preferences"), shadow.topic("presence")]):
            worker.alive()
            if time.monotonic() > deadline:
                raise ReplayError(f"the shadow worker did not read the preferences in {timeout:g} s; log: {worker.log}")
            time.sleep(0.5)
        events = _copy(settings, settings.topic("events"), shadow.topic("events"), start, end, codec,
                       on_plan=lambda total: on_phase("copying events", total), tick=tick)
        on_phase("waiting for the shadow decisions", len(events))
        reader = Decisions(shadow, codec)
        n = 0
        try:
            done = -1
            while True:
                reader.poll()
                now = int(time.time() * 1000)
                n = settled(events, reader.records, now)
                if n != done:
                    done = n
                    tick(n)
                if n >= len(events) or time.monotonic() > deadline:
                    break
                worker.alive()
        finally:
            reader.close()
        shadow_decisions = reader.records
        shadow_requests = [r for c in _channels() for r in _read_all(shadow, shadow.topic(f"delivery.{c}"),
                                                                      "DeliveryRequest", None, codec)]
    finally:
        worker.stop()
        if not keep:
            deleted = delete(settings, shadow)
            shutil.rmtree(names["HERALD_DATA_DIR"], ignore_errors=True)
    since = start.ms if start is not None and start.ms is not None else None
    on_phase("reading the live decisions", None)
    live = _read_all(settings, settings.topic("decisions"), "Decision", since, codec)
    live_requests = [r for c in _channels() for r in _read_all(settings, settings.topic(f"delivery.{c}"),
                                                                "DeliveryRequest", since, codec)]
    report = compare(events, live, shadow_decisions, live_requests, shadow_requests)
    meta = {"run_id": run_id, "started_at": started, "settings": sets, "topic_prefix": shadow.topic_prefix,
            "app_id": shadow.app_id, "kept": keep, "unsettled": len(events) - n,
            "shadow_requests": len(shadow_requests)}
    return Run(run_id, shadow, events, report, meta, deleted)


def _channels() -> list[str]:
    from herald.enums import CHANNELS

    return [c.lower() for c in CHANNELS]
