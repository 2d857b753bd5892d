"""A long mixed run at a fixed rate: does every input come out exactly once, with nothing emitted twice?

Issue #4's acceptance run: ``--rate`` events/s (default 1,000) for ``--minutes`` (default 30) of the
benchmark workload (``bench.workload``: all priorities, 10% duplicates, preferences for 20% of the
users) with ``--bad-share`` of undecodable or invalid records mixed in, through one real worker with
short batch windows and digest periods. While it runs it prints, every 30 s, what went in, what came
out and how far behind the worker is. At the end it checks and prints:

- inputs = final decisions + dead letters (one per bad record: a record dead-lettered again after being
  read again counts once, and the repeats are reported) + events still held, exactly: each valid record has one final
  decision, or (an event of a user in quiet hours that outlast the run) an interim
  DEFERRED_QUIET_HOURS / SCHEDULED one and nothing final yet; each bad record one dead letter. Checked
  per event_id (a producer's retry of an event is a record of its own, decided DEDUPLICATED); a final
  decision written twice, even identically, counts twice;
- no batch or digest emitted twice: no two BATCH (or DIGEST) requests for the same user, channel and
  window (period), no delivery_id carried by two different requests (the sinks' ledgers would drop the
  second: a loss), no event in two batches (digests) of one channel; a request written again
  identically (at least once, after a rebalance or crash) is harmless for the same reason and counted;
- the worker's memory (RSS) over the run, and how long after the last input the last final came;
- each event_id that has fewer final decisions than records (at most 50, ``undecided`` in the figures): its
  partition and offset on the input topic, the decisions it did get, the worker log lines naming it or
  its offset. The topics are never deleted by this command, so such a run can be looked into.

    python -m bench.soak --rate 1000 --minutes 30          # the acceptance run (about 32 minutes)
    python -m bench.soak --rate 500 --minutes 1            # a quick look

Uses the stack `herald up --detach` runs (or the HERALD_* addresses), on topics of its own. Writes the
figures to ``bench/results/soak-<date>.json`` (``--json`` to choose).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer, Producer

from bench.ingest_accounting import bad_record
from bench.workload import generate_events, generate_preferences, producer_config
from herald.kafka import client_config
from herald.settings import Settings
from herald.topics import CHANNELS, ensure_topics, register_schemas
from infra.common import REPO_ROOT
from schemas.codec import Codec
from schemas.registry import Registry

RESULTS = REPO_ROOT / "bench" / "results"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Checker(threading.Thread):
    """Reads the decisions, dead-letter and delivery topics from the start and keeps what the checks need."""

    def __init__(self, settings: Settings, codec: Codec, extra_topics: tuple[str, ...] = ()) -> None:
        """``extra_topics`` are read too and handed to ``other()`` (a subclass's own records)."""
        super().__init__(daemon=True)
        self.extra_topics = set(extra_topics)
        self.codec = codec
        self.decisions_topic, self.dlq_topic = settings.topic("decisions"), settings.topic("dlq")
        self.finals = 0
        self.first_decided: set[str] = set()
        self.finals_of: Counter = Counter()  # event_id -> final decisions
        self.routed_of: Counter = Counter()  # event_id -> final decisions other than DEDUPLICATED
        self.held: set[str] = set()  # event ids announced DEFERRED_QUIET_HOURS or SCHEDULED
        self.dead = 0
        self.reasons: Counter = Counter()
        self.outcomes: Counter = Counter()
        self.requests = 0
        self.request_kinds: Counter = Counter()
        self.copies_of_id: Counter = Counter()  # delivery_id -> request records carrying it
        self.contents_of_id: dict[str, set[bytes]] = defaultdict(set)  # delivery_id -> distinct record values
        self.dead_sources: Counter = Counter()  # (topic, partition, offset) of the record dead-lettered
        self.windows: dict[tuple, set[str]] = defaultdict(set)  # (user, channel, kind, type, window, part) -> ids
        self.grouped: dict[tuple, set[str]] = defaultdict(set)  # (event, channel, kind) -> delivery ids
        self.last_final = time.monotonic()
        self._halt = threading.Event()
        self.consumer = Consumer(client_config(settings, **{"group.id": f"soak-{uuid.uuid4()}",
                                                            "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        self.consumer.subscribe([self.decisions_topic, self.dlq_topic,
                                 *(settings.topic(f"delivery.{c.lower()}") for c in CHANNELS), *self.extra_topics])
        self.start()

    def run(self) -> None:
        while not self._halt.is_set():
            for msg in self.consumer.consume(2000, 0.2):
                if not msg.error():
                    self.add(msg)
        self.consumer.close()

    def add(self, msg) -> None:  # noqa: ANN001
        topic = msg.topic()
        if topic in self.extra_topics:
            self.other(msg)
        elif topic == self.dlq_topic:
            headers = dict(msg.headers())
            source = tuple(headers.get(f"herald.source.{k}", b"") for k in ("topic", "partition", "offset"))
            self.dead_sources[source] += 1
            if self.dead_sources[source] > 1:
                return  # the same record dead-lettered again after being read again: one input, counted once
            self.dead += 1
            self.reasons[headers["herald.error.reason"].decode()] += 1
            self.last_final = time.monotonic()
        elif topic == self.decisions_topic:
            d = self.codec.decode(msg.value(), "Decision")
            self.first_decided.add(d["event_id"])
            if d["final"]:
                self.finals += 1
                self.finals_of[d["event_id"]] += 1
                if d["outcome"] != "DEDUPLICATED":
                    self.routed_of[d["event_id"]] += 1
                self.outcomes[d["outcome"]] += 1
                self.last_final = time.monotonic()
            elif d["outcome"] in ("DEFERRED_QUIET_HOURS", "SCHEDULED"):
                self.held.add(d["event_id"])
        else:
            r = self.codec.decode(msg.value(), "DeliveryRequest")
            self.requests += 1
            self.request_kinds[r["kind"]] += 1
            self.copies_of_id[r["delivery_id"]] += 1
            self.contents_of_id[r["delivery_id"]].add(hashlib.blake2b(msg.value(), digest_size=12).digest())
            if r["kind"] in ("BATCH", "DIGEST"):
                data = r["data"] or {}
                # one request per user, channel, type and window (a batch cut early, when full, ends at the cut)
                window = (data.get("window_start") or data.get("period_start"), data.get("window_end") or data.get("period_end"))
                self.windows[(r["user_id"], r["channel"], r["kind"], r["type"], window, data.get("part"))].add(
                    r["delivery_id"])
                for event_id in r["event_ids"]:
                    self.grouped[(event_id, r["channel"], r["kind"])].add(r["delivery_id"])

    def other(self, msg) -> None:  # noqa: ANN001
        """A record of one of ``extra_topics``; nothing here."""

    def close(self) -> None:
        self._halt.set()
        self.join(30)

    def still_held(self) -> set[str]:
        """Events held (quiet hours, schedule) that have no outcome of their own yet."""
        return {e for e in list(self.held) if not self.routed_of.get(e)}

    def unaccounted(self, expected: Counter) -> dict[str, int]:
        """event_id -> valid records of it minus (final decisions + 1 if it is still held), where not 0."""
        held = self.still_held()
        out = {}
        for event_id in set(expected) | set(self.finals_of):
            diff = expected.get(event_id, 0) - self.finals_of.get(event_id, 0) - (event_id in held)
            if diff:
                out[event_id] = diff
        return out

    def problems(self) -> dict:
        return {
            # the same delivery_id with other content: the sinks' ledger would drop the second, i.e. lose it
            "delivery_ids_with_different_contents": sum(1 for c in self.contents_of_id.values() if len(c) > 1),
            "windows_with_more_than_one_delivery": sum(1 for ids in self.windows.values() if len(ids) > 1),
            "events_in_more_than_one_batch_or_digest": sum(1 for ids in self.grouped.values() if len(ids) > 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="events per second produced (default 1000)")
    parser.add_argument("--minutes", type=float, default=30, help="how long to produce (default 30)")
    parser.add_argument("--users", type=int, default=20_000, help="distinct users (default 20,000)")
    parser.add_argument("--bad-share", type=float, default=0.01, help="share of bad records (default 0.01)")
    parser.add_argument("--batch-window-s", type=int, default=5)
    parser.add_argument("--digest-period-s", type=int, default=60)
    parser.add_argument("--drain-timeout", type=float, default=900, help="seconds to wait for the worker to catch up")
    parser.add_argument("--second-worker-at", type=float, default=None, metavar="MIN",
                        help="start a second worker (its own state folder) this many minutes in: a rebalance under load")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    args = parser.parse_args(argv)

    total = int(args.rate * args.minutes * 60)
    unique = f"soak{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.", app_id=f"{unique}-pipeline")
    ensure_topics(settings)
    register_schemas(settings)
    codec = Codec(Registry(settings.schema_registry_url))
    events_topic = settings.topic("events")
    print(f"generating {total:,} events over {args.users:,} users ({args.bad_share:.1%} bad) on {unique}.*",
          file=sys.stderr, flush=True)
    tally: Counter = Counter()
    good = generate_events(codec, f"{events_topic}-value", total, args.users, seed=7, tally=tally)
    rng = random.Random(11)
    schema_id = good[0][1][1:5]
    records: list[tuple[bytes | None, bytes | None, bool]] = []
    for key, value in good:
        if rng.random() < args.bad_share:
            records.append((*bad_record(rng, value, schema_id, key.decode()), False))
        else:
            records.append((key, value, True))
    valid = sum(1 for r in records if r[2])
    expected: Counter = Counter(codec.decode(v, "NotificationEvent")["event_id"] for _, v, ok in records if ok)
    prefs = generate_preferences(codec, f"{settings.topic('preferences')}-value", args.users, seed=7)

    producer = Producer(producer_config(settings.kafka_bootstrap) | {"linger.ms": 5})
    for key, value in prefs:
        producer.produce(settings.topic("preferences"), value, key)
    producer.flush(60)

    env = {**os.environ, "HERALD_TOPIC_PREFIX": f"{unique}.", "HERALD_APP_ID": f"{unique}-pipeline",
           "HERALD_BATCH_WINDOW_S": str(args.batch_window_s), "HERALD_DIGEST_PERIOD_S": str(args.digest_period_s),
           "HERALD_TICK_INTERVAL_S": "0.5"}
    log_path = Path("/tmp") / f"{unique}-worker.log"
    log = open(log_path, "wb")
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    checker = Checker(settings, codec)
    second = None
    rss: list[float] = []
    try:
        while b"Ready" not in log_path.read_bytes():
            if worker.poll() is not None:
                raise SystemExit(f"worker exited; see {log_path}")
            time.sleep(0.2)
        print(f"worker ready (log {log_path}); producing {args.rate:,} events/s for {args.minutes:g} min",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        sent = 0
        last_report = started
        slice_s = 0.1
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - started) * args.rate) + 1)
            while sent < due:
                key, value, _ = records[sent]
                try:
                    producer.produce(events_topic, value, key)
                except BufferError:
                    producer.poll(0.05)
                    continue
                sent += 1
            producer.poll(0)
            now = time.monotonic()
            if second is None and args.second_worker_at is not None and now - started >= args.second_worker_at * 60:
                home = Path("/tmp") / f"{unique}-second-home"
                home.mkdir(exist_ok=True)
                second = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT,
                                          env={**env, "HERALD_HOME": str(home)},
                                          stdout=open(Path("/tmp") / f"{unique}-worker2.log", "wb"), stderr=subprocess.STDOUT)
                print(f"  {now - started:6.0f} s: a second worker joins (log /tmp/{unique}-worker2.log)",
                      file=sys.stderr, flush=True)
            if now - last_report >= 30:
                last_report = now
                rss.append(rss_mb(worker.pid))
                taken = len(checker.first_decided) + checker.dead
                print(f"  {now - started:6.0f} s: produced {sent:,}, taken in ~{taken:,} (behind {sent - taken:,}), "
                      f"finals {checker.finals:,}, dead letters {checker.dead:,}, worker RSS {rss[-1]:.0f} MB",
                      file=sys.stderr, flush=True)
            time.sleep(slice_s)
        producer.flush(60)
        produced_s = time.monotonic() - started
        print(f"produced {sent:,} in {produced_s:.0f} s ({sent / produced_s:,.0f}/s); waiting for the worker",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and (checker.dead < len(records) - valid
                                               or checker.finals + len(checker.still_held()) < valid
                                               or checker.unaccounted(expected)):
            time.sleep(5)
        caught_up_s = time.monotonic() - started
        time.sleep(max(10, args.digest_period_s / 2))  # anything decided twice would arrive now
        rss.append(rss_mb(worker.pid))
        alive = worker.poll() is None
    finally:
        for w in (worker, second):
            if w is None:
                continue
            w.terminate()
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
        checker.close()

    problems = checker.problems()
    unaccounted = checker.unaccounted(expected)
    undecided: list[dict] = []
    missing = {e: n for e, n in unaccounted.items() if n > 0}
    if missing:  # name them: where they are on the input topic, what was decided, what the workers logged
        from bench.undecided import explain

        def decision(value: bytes) -> tuple[str, str, bool]:
            d = codec.decode(value, "Decision")
            return d["event_id"], d["outcome"], bool(d["final"])

        logs = [log_path, Path("/tmp") / f"{unique}-worker2.log"]
        try:
            undecided = explain(settings.kafka_bootstrap, events_topic, settings.topic("decisions"), decision, missing, logs)
        except Exception as exc:  # noqa: BLE001 - the figures stand without the names
            print(f"could not name the undecided events: {exc}", file=sys.stderr)
        for entry in undecided[:10]:
            print(f"undecided: {entry['event_id']} at {events_topic} {entry['likely_undecided']}, decisions "
                  f"{entry['decisions'] or 'none'}; worker log lines: {entry['worker_log_lines'] or 'none'}",
                  file=sys.stderr)
        print(f"the topics {unique}.* are kept for inspection (this command never deletes them)", file=sys.stderr)
    held = len(checker.still_held())
    figures = {
        "unique": unique, "rate_target_events_per_s": args.rate, "minutes": args.minutes, "users": args.users,
        "batch_window_s": args.batch_window_s, "digest_period_s": args.digest_period_s,
        "inputs": len(records), "valid_inputs": valid, "bad_inputs": len(records) - valid,
        "duplicates_in_workload": tally["duplicates"],
        "final_decisions": checker.finals, "dead_letters": checker.dead, "still_held_at_end": held,
        "inputs_equal_finals_plus_held_plus_dead_letters": checker.finals + held + checker.dead == len(records)
        and checker.dead == len(records) - valid and not unaccounted,
        "event_ids_unaccounted": len(unaccounted), "unaccounted_examples": dict(list(unaccounted.items())[:5]),
        "event_ids_undecided": len(missing), "undecided": undecided,
        "final_outcomes": dict(checker.outcomes), "dead_letter_reasons": dict(checker.reasons),
        "delivery_requests": checker.requests, "delivery_kinds": dict(checker.request_kinds),
        # at least once: a record read again after a rebalance or crash may be written again, identically
        "delivery_records_repeated_identically": sum(n - 1 for n in checker.copies_of_id.values() if n > 1),
        "dead_letters_repeated_for_the_same_record": sum(n - 1 for n in checker.dead_sources.values() if n > 1),
        **problems,
        "nothing_emitted_twice": not any(problems.values()),
        "produce_s": round(produced_s, 1), "produced_events_per_s": round(sent / produced_s, 1),
        "all_final_after_s": round(checker.last_final - started, 1), "caught_up_s": round(caught_up_s, 1),
        "worker_alive_at_end": alive, "second_worker_joined_at_min": args.second_worker_at, "worker_rss_mb_max": round(max(rss or [0]), 1),
        "worker_rss_mb_end": round(rss[-1] if rss else 0, 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload_digest": hashlib.blake2b(b"".join(v or b"" for _, v, _ in records[:1000]), digest_size=8).hexdigest(),
    }
    print(json.dumps(figures, indent=2))
    out = args.json or RESULTS / f"soak-{datetime.now(timezone.utc):%Y%m%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out}", file=sys.stderr)
    return 0 if figures["inputs_equal_finals_plus_held_plus_dead_letters"] and figures["nothing_emitted_twice"] else 1


if __name__ == "__main__":
    sys.exit(main())
