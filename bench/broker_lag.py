"""The floor under the CRITICAL latency figure: how late a bare consumer, doing nothing else, sees the events.

``herald bench`` times each CRITICAL event from its producer to its first delivery record. Part of that
time is not Herald's: the producer's send, the broker's append and the fetch that hands the record to
any consumer, all on the same cores as the workers. This process measures that part on its own while
the latency stream runs: it reads every partition of the events topic from its end (assigned, no group),
as the lane's reader does (``read_committed`` under exactly-once, ``fetch.wait.max.ms`` from ``--fetch-wait-ms``),
and keeps each record's lag from its create timestamp to the moment ``poll`` returned it, but for the records
created in the first ``--warmup-s`` after the first one it reads (the stream's warm-up, which the bench does
not time). It runs in a process of its own so that the bench's stream and tap threads do not hold it back, and does no other work per
record. On SIGTERM (or SIGINT) it writes ``{"records", "p50_ms", "p95_ms", "p99_ms", "max_ms"}`` as JSON
to ``--out`` and exits.

    python -m bench.broker_lag --bootstrap 127.0.0.1:9092 --topic herald.events --out /tmp/lag.json
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

READY = "assigned"  # printed on stdout once the partitions are assigned: records from then on are timed


def summary(lags_ms: list[float]) -> dict:
    """The count and the p50/p95/p99/max of ``lags_ms`` (only the count when there is none)."""
    from bench.run import percentile

    ordered = sorted(lags_ms)
    if not ordered:
        return {"records": 0}
    return {"records": len(ordered), **{f"p{p}_ms": round(percentile(ordered, p) or 0.0, 2) for p in (50, 95, 99)},
            "max_ms": round(ordered[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.broker_lag", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--topic", required=True, help="the events topic the latency stream writes")
    p.add_argument("--out", required=True, type=Path, help="where the JSON summary goes at SIGTERM")
    p.add_argument("--warmup-s", type=float, default=0.0, help="seconds of records not timed, from the first one read")
    p.add_argument("--fetch-wait-ms", type=int, default=100, help="fetch.wait.max.ms, as the workers' HERALD_FETCH_MAX_WAIT_MS")
    p.add_argument("--read-uncommitted", action="store_true", help="as a worker with HERALD_EXACTLY_ONCE=false reads")
    args = p.parse_args(argv)

    from confluent_kafka import Consumer, TopicPartition

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "herald-bench-broker-lag",
                         "enable.auto.commit": False, "fetch.wait.max.ms": args.fetch_wait_ms,
                         "isolation.level": "read_uncommitted" if args.read_uncommitted else "read_committed"})
    lags: list[float] = []
    timed_from_ms: float | None = None  # create time from which records are timed
    try:
        meta = consumer.list_topics(args.topic, timeout=10).topics[args.topic]
        consumer.assign([TopicPartition(args.topic, partition,
                                        consumer.get_watermark_offsets(TopicPartition(args.topic, partition),
                                                                       timeout=10)[1])
                         for partition in meta.partitions])
        print(READY, flush=True)
        while not stopping:
            first = consumer.poll(0.1)
            if first is None:
                continue
            now_ms = time.time() * 1000
            for msg in (first, *consumer.consume(1000, 0)):
                if msg.error() is not None:
                    continue
                created_ms = msg.timestamp()[1]
                if timed_from_ms is None:
                    timed_from_ms = created_ms + args.warmup_s * 1000
                if created_ms >= timed_from_ms:
                    lags.append(now_ms - created_ms)
    finally:
        consumer.close()
    args.out.write_text(json.dumps(summary(lags)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
