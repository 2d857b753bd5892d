"""Ingest accounting under load: N events, a share of them bad, through the real pipeline.

Prints inputs, final decisions, dead letters (by reason), whether inputs = final decisions + dead
letters exactly (every valid event decided once, every bad record dead-lettered once), and the
pipeline's intake throughput: inputs over the time until every one had its first decision or dead
letter (batches and digests then go out when their short windows close: `all_final_s`). Uses the stack `herald up --detach` runs (or the
HERALD_* addresses), on topics of its own.

    python -m bench.ingest_accounting --events 100000 --bad-share 0.05
"""
from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, Producer

from herald.kafka import client_config
from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra.common import REPO_ROOT
from schemas.codec import Codec
from schemas.registry import Registry


def bad_record(rng: random.Random, good: bytes, schema_id: bytes, user: str) -> tuple[bytes | None, bytes | None]:
    kind = rng.randrange(6)
    if kind == 0:
        return user.encode(), b'{"json": "from a misconfigured producer"}'
    if kind == 1:
        return user.encode(), b"\x00\x01"
    if kind == 2:
        return user.encode(), b"\x00" + struct.pack(">I", 900_000_000 + rng.randrange(3)) + good[5:]
    if kind == 3:
        return user.encode(), None
    if kind == 4:
        return b"not-" + user.encode(), good
    return user.encode(), b"\x00" + schema_id + b"\xff" * 12


def generate(settings: Settings, codec: Codec, n: int, bad_share: float, seed: int = 1) -> list[tuple]:
    rng = random.Random(seed)
    subject = f"{settings.topic('events')}-value"
    users = [f"bench-user-{i}" for i in range(10_000)]
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = rng.choice(users)
        event = {"event_id": f"ev-{i}", "user_id": user, "type": rng.choice(["TASK_DEADLINE", "COMMENT", "HABIT_REMINDER"]),
                 "priority": rng.choice(["LOW", "NORMAL", "HIGH", "CRITICAL"]), "title": "Title", "body": "Body",
                 "data": {"entity_id": str(i)}, "occurred_at": now, "dedup_key": None, "batchable": True,
                 "channels": None, "deliver_after": None, "cancel_key": None}
        good = codec.encode(subject, "NotificationEvent", event)
        if rng.random() < bad_share:
            out.append((*bad_record(rng, good, good[1:5], user), False))
        else:
            out.append((user.encode(), good, True))
    return out


class Tally:
    """What has come out so far: final decisions, dead letters by reason, and which events were taken in."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.final = 0
        self.dead = 0
        self.reasons: Counter = Counter()
        self.taken_in: set[str] = set()
        self.last_final = self.last_taken_in = time.monotonic()

    def add(self, msg) -> None:
        if msg.topic().endswith("dlq"):
            self.dead += 1
            self.reasons[dict(msg.headers())["herald.error.reason"].decode()] += 1
            self.last_taken_in = self.last_final = time.monotonic()
            return
        decision = self.codec.decode(msg.value(), "Decision")
        if decision["event_id"] not in self.taken_in:
            self.taken_in.add(decision["event_id"])
            self.last_taken_in = time.monotonic()
        if decision["final"]:
            self.final += 1
            self.last_final = time.monotonic()

    def drain(self, consumer: Consumer, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self):
            for msg in consumer.consume(1000, 0.5):
                if not msg.error():
                    self.add(msg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--bad-share", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    unique = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env(topic_prefix=f"{unique}.", app_id=f"{unique}-pipeline")
    ensure_topics(settings)
    register_schemas(settings)
    codec = Codec(Registry(settings.schema_registry_url))
    print(f"generating {args.events:,} events ({args.bad_share:.0%} bad) on topics {unique}.*", file=sys.stderr)
    records = generate(settings, codec, args.events, args.bad_share)
    valid = sum(1 for r in records if r[2])

    env = {**__import__("os").environ, "HERALD_TOPIC_PREFIX": f"{unique}.", "HERALD_APP_ID": f"{unique}-pipeline",
           "HERALD_BATCH_WINDOW_S": "2", "HERALD_DIGEST_PERIOD_S": "10"}
    log = open(Path("/tmp") / f"{unique}-worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    consumer = Consumer({**client_config(settings), "group.id": f"{unique}-count",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("decisions"), settings.topic("dlq")])
    try:
        while b"Ready" not in Path(log.name).read_bytes():
            if worker.poll() is not None:
                raise SystemExit(f"worker exited; see {log.name}")
            time.sleep(0.2)
        producer = Producer({**client_config(settings), "linger.ms": 20, "batch.size": 1_000_000,
                             "partitioner": "murmur2_random",  # Kafka's default: no hop to the user's home partition
                             "queue.buffering.max.messages": 1_000_000})
        started = time.monotonic()
        for key, value, _ in records:
            producer.produce(settings.topic("events"), key=key, value=value)
            producer.poll(0)
        producer.flush(60)
        produced_s = time.monotonic() - started
        tally = Tally(codec)
        tally.drain(consumer, lambda t: len(t.taken_in) + t.dead >= args.events, args.timeout)
        tally.drain(consumer, lambda t: t.final + t.dead >= args.events, args.timeout)
        tally.drain(consumer, lambda t: False, 5)  # a record decided twice would arrive now
    finally:
        worker.terminate()
        worker.wait(30)
        consumer.close()
    taken_in_s = tally.last_taken_in - started
    figures = {
        "inputs": args.events, "valid_inputs": valid, "bad_inputs": args.events - valid,
        "final_decisions": tally.final, "dead_letters": tally.dead, "dead_letter_reasons": dict(tally.reasons),
        "accounted_exactly": tally.final == valid and tally.dead == args.events - valid,
        "produce_s": round(produced_s, 2),
        "taken_in_s": round(taken_in_s, 2),
        "all_final_s": round(tally.last_final - started, 2),
        "pipeline_events_per_s": round(args.events / taken_in_s, 1),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["accounted_exactly"] else 1


if __name__ == "__main__":
    sys.exit(main())
