"""The raw ceiling: the same bytes consumed from one topic and produced to another, nothing decided.

One process, confluent-kafka, batch ``consume()``; keys and values are passed on untouched (no decode,
no state). Whatever a stateful pipeline does per event, it cannot beat this on the same machine and
broker, so it is the yardstick the other figures are read against. The rate is N over the time from the
first record consumed to the last one produced and acknowledged (``flush``):

    python -m bench.passthrough --events 200000
    ...
    passthrough: 200,000 events in 1.22 s = 163,460 events/s
    {... "passthrough_events": 200000, "passthrough_seconds": 1.224, "passthrough_events_per_s": 163460.0, ...}

Without ``--source`` it first makes and produces a workload of its own (``bench.workload``) on a new
``benchXXXXXX.`` prefix, and deletes those topics afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid


def consumer_config(bootstrap: str, group: str) -> dict:
    return {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "enable.auto.offset.store": True, "enable.partition.eof": False,
            "fetch.min.bytes": 1, "queued.min.messages": 100_000}


def run(source_topic: str, events: int, *, bootstrap: str | None = None, target_topic: str | None = None,
        group: str | None = None, partitions: int | None = None, batch: int = 10_000, timeout_s: float = 300.0,
        progress: bool = True) -> dict:
    """Copy the first ``events`` records of ``source_topic`` to ``target_topic`` (default
    ``<source_topic>.passthrough``, created with ``partitions``, default the source's) and return
    ``passthrough_events``, ``passthrough_seconds``, ``passthrough_events_per_s``, ``passthrough_outputs``
    (records in the target topic afterwards), ``passthrough_complete`` and the topic names. ``bootstrap`` defaults to ``HERALD_KAFKA_BOOTSTRAP``."""
    from confluent_kafka import Consumer, Producer

    from bench.workload import create_topics, end_offsets_total, partitions_of, producer_config
    from herald.settings import Settings

    bootstrap = bootstrap or Settings.from_env().kafka_bootstrap
    target_topic = target_topic or f"{source_topic}.passthrough"
    group = group or f"bench-passthrough-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [target_topic], partitions or partitions_of(bootstrap, source_topic))
    consumer = Consumer(consumer_config(bootstrap, group))
    errors: list = []
    producer = Producer({**producer_config(bootstrap), "linger.ms": 5,
                         "on_delivery": lambda err, msg: errors.append(err) if err else None})
    produce, poll = producer.produce, producer.poll
    consumer.subscribe([source_topic])
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)

    count = 0
    first = None
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    try:
        while count < events and time.monotonic() < deadline:
            messages = consumer.consume(min(batch, events - count), 0.5)
            if not messages:
                continue
            if first is None:
                first = time.monotonic()
            for msg in messages:
                if msg.error():
                    continue
                while True:
                    try:
                        produce(target_topic, msg.value(), msg.key())
                        break
                    except BufferError:
                        poll(0.05)
                count += 1
            poll(0)
            now = time.monotonic()
            if now - last_report >= 2:
                last_report = now
                say(f"  passthrough: {count:,}/{events:,} ({count / (now - first):,.0f}/s)")
        left = producer.flush(60)
        ended = time.monotonic()
    finally:
        consumer.close()
    seconds = (ended - first) if first is not None else 0.0
    outputs = end_offsets_total(bootstrap, target_topic)
    figures = {
        "passthrough_events": count, "passthrough_seconds": round(seconds, 3),
        "passthrough_events_per_s": round(count / seconds, 1) if seconds else 0.0,
        "passthrough_outputs": outputs,
        "passthrough_complete": count >= events and outputs >= events and not left and not errors,
        "passthrough_errors": len(errors) + left,
        "passthrough_source_topic": source_topic, "passthrough_target_topic": target_topic,
    }
    say(f"passthrough: {count:,} events in {seconds:.2f} s = {figures['passthrough_events_per_s']:,.0f} events/s")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to pass through (default 200,000)")
    parser.add_argument("--users", type=int, default=None, help="users of a generated workload (default events / 10)")
    parser.add_argument("--source", default=None, help="an existing topic holding at least --events records "
                                                       "(default: generate and produce a workload first)")
    parser.add_argument("--target", default=None, help="output topic (default <source>.passthrough)")
    parser.add_argument("--keep", action="store_true", help="keep the topics this command created")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from bench import workload
    from herald.settings import Settings

    figures: dict = {}
    prefix = None
    source = args.source
    if source is None:
        prefix = workload.unique_prefix()
        settings = Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}pipeline")
        figures.update(workload.run(args.events, args.users or max(1, args.events // 10), settings=settings))
        source = figures["events_topic"]
    try:
        figures.update(run(source, args.events, target_topic=args.target))
    finally:
        if prefix and not args.keep:
            workload.delete_topics(Settings.from_env().kafka_bootstrap, lambda t: t.startswith(prefix))
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if figures["passthrough_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
