"""Which input records have no decision: named by event id, with their partition and offset on the input topic.

A benchmark phase that ends with fewer events decided than it fed in says how many; this says which. It
reads the input topic and the decisions topic from their beginning to their current end and compares, per
event_id, the input records carrying it with the decisions that answer them, by the rule the benchmark's
own counter uses (``bench.run.Decided``):

- the first decision of an event_id (any outcome, interim or final) answers its first record;
- every further DEDUPLICATED decision of it answers one more record (a producer's retry of the same
  event_id is a record of its own, decided DEDUPLICATED); other further decisions (a batch's or a digest's
  final decision after an interim one, or a record decided again after a rebalance) answer none.

An event_id with more records than answers is *undecided*: its records are listed (partition, offset);
when some of them are answered, the ones listed first in offset order are taken as the answered ones, so
the last ``missing`` records are the likely unanswered ones (``likely_undecided``). Records that are not a
NotificationEvent (a bad record, a tombstone) are skipped: they get a dead letter, not a decision.

``worker_lines`` then finds what the workers logged about them: every log line naming the event id or its
``<partition>@<offset>`` on the input topic (the pipeline logs a failed record as ``topic:partition@offset``).
"""
from __future__ import annotations

import re
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    n, shift = b & 0x7F, 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def event_id_of(value: bytes | None) -> str | None:
    """The event_id of a NotificationEvent in the Confluent wire format (its first field), None if not one."""
    if not value or len(value) < 6 or value[0] != 0:
        return None
    try:
        n, pos = _long(value, 5)
        if n <= 0 or pos + n > len(value):
            return None
        return value[pos:pos + n].decode()
    except (IndexError, UnicodeDecodeError):
        return None


def read_topic(bootstrap: str, topic: str, handle: Callable[[Any], None], timeout_s: float = 120.0) -> int:
    """Hand every record of ``topic`` from its beginning to its end *now* (its high watermarks) to ``handle``;
    the count. Raises if the end is not reached within ``timeout_s``."""
    import time

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-undecided-{uuid.uuid4().hex[:10]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        todo = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        if not todo:
            return 0
        consumer.assign([TopicPartition(topic, p, lo) for p, (lo, hi) in ends.items() if hi > lo])
        count, deadline = 0, time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            for msg in consumer.consume(10_000, 0.5):
                p = msg.partition()
                if msg.error():
                    # the end by position: a partition written in transactions ends in a marker, never a record
                    if msg.error().code() == KafkaError._PARTITION_EOF and p in todo and msg.offset() >= todo[p]:
                        del todo[p]
                    continue
                handle(msg)
                count += 1
                if p in todo and msg.offset() >= todo[p] - 1:
                    del todo[p]
        return count
    finally:
        consumer.close()


def find(bootstrap: str, events_topic: str, decisions_topic: str, decision: Callable[[bytes], tuple[bytes, int, bool]],
         outcomes: list[str], limit: int = 50) -> dict:
    """Compare the input topic with the decisions topic (see the module's doc). ``decision`` reads
    ``(event_id bytes, outcome index, final)`` from a Decision's bytes (``bench.run.Heads.decision``);
    ``outcomes`` names the outcome indexes. Returns ``{"inputs", "decisions", "undecided_records",
    "undecided": [at most ``limit`` entries], "undecided_event_ids"}``."""
    records: dict[str, list[tuple[int, int]]] = defaultdict(list)
    answers: dict[str, list[tuple[str, bool]]] = defaultdict(list)

    def on_input(msg: Any) -> None:
        event_id = event_id_of(msg.value())
        if event_id is not None:
            records[event_id].append((msg.partition(), msg.offset()))

    def on_decision(msg: Any) -> None:
        event_id, outcome, final = decision(msg.value())
        answers[event_id.decode()].append((outcomes[outcome], final))

    inputs = read_topic(bootstrap, events_topic, on_input)
    decided = read_topic(bootstrap, decisions_topic, on_decision)
    return compare(records, answers, inputs=inputs, decisions=decided, limit=limit)


def locate(bootstrap: str, events_topic: str, event_ids: Iterable[str]) -> dict[str, list[dict]]:
    """event_id -> its records on the input topic (``{"partition", "offset"}``, in offset order), for the
    given ids (a checker that counts its own way and only needs to say where its undecided ones are)."""
    wanted = set(event_ids)
    found: dict[str, list[dict]] = {e: [] for e in wanted}
    if not wanted:
        return found

    def on_input(msg: Any) -> None:
        event_id = event_id_of(msg.value())
        if event_id in wanted:
            found[event_id].append({"partition": msg.partition(), "offset": msg.offset()})

    read_topic(bootstrap, events_topic, on_input)
    for records in found.values():
        records.sort(key=lambda r: (r["partition"], r["offset"]))
    return found


def answered(decisions: list[tuple[str, bool]]) -> int:
    """How many input records of one event_id its decisions answer (the rule in the module's doc)."""
    if not decisions:
        return 0
    return 1 + sum(1 for outcome, _ in decisions[1:] if outcome == "DEDUPLICATED")


def compare(records: dict[str, list[tuple[int, int]]], answers: dict[str, list[tuple[str, bool]]], *,
            inputs: int = 0, decisions: int = 0, limit: int = 50) -> dict:
    """The undecided event ids of ``records`` (event_id -> its (partition, offset) records) given ``answers``
    (event_id -> its (outcome, final) decisions in the order written)."""
    undecided = []
    for event_id, where in records.items():
        missing = len(where) - answered(answers.get(event_id, []))
        if missing > 0:
            where = sorted(where)
            undecided.append({"event_id": event_id, "records": [{"partition": p, "offset": o} for p, o in where],
                              "likely_undecided": [{"partition": p, "offset": o} for p, o in where[-missing:]],
                              "missing": missing,
                              "decisions": [f"{o}{'' if f else ' (interim)'}" for o, f in answers.get(event_id, [])]})
    undecided.sort(key=lambda u: (u["likely_undecided"][0]["partition"], u["likely_undecided"][0]["offset"]))
    return {"inputs": inputs, "decisions": decisions, "undecided_records": sum(u["missing"] for u in undecided),
            "undecided_event_ids": len(undecided), "undecided": undecided[:limit]}


def worker_lines(logs: Iterable[Path], undecided: list[dict], per_event: int = 20) -> dict[str, list[str]]:
    """event_id -> the worker log lines (``<log name>: <line>``) naming it or one of its records' offsets."""
    needles: dict[str, re.Pattern] = {}
    for u in undecided:  # whole words only: ev-7 is not ev-70, :2@9 is not :2@90
        words = [rf"(?<![\w-]){re.escape(u['event_id'])}(?![\w-])"]
        words += [rf":{r['partition']}@{r['offset']}(?!\d)" for r in u["records"]]
        needles[u["event_id"]] = re.compile("|".join(words))
    found: dict[str, list[str]] = {e: [] for e in needles}
    if not needles:
        return found
    for log in logs:
        try:
            with open(log, "r", errors="replace") as f:
                for line in f:
                    for event_id, pattern in needles.items():
                        if len(found[event_id]) < per_event and pattern.search(line):
                            found[event_id].append(f"{log.name}: {line.rstrip()[:500]}")
        except OSError:
            continue
    return found


def explain(bootstrap: str, events_topic: str, decisions_topic: str, decision: Callable[[bytes], tuple[str, str, bool]],
            missing: dict[str, int], logs: Iterable[Path], limit: int = 50) -> list[dict]:
    """Entries like ``find``'s for the event ids a checker found undecided (``missing``: event_id -> records
    without their decision): their records on the input topic, the decisions written for them (``decision``
    reads ``(event_id, outcome, final)`` from a Decision's bytes) and the worker log lines about them."""
    chosen = dict(sorted(missing.items())[:limit])
    where = locate(bootstrap, events_topic, chosen)
    answers: dict[str, list[str]] = {e: [] for e in chosen}

    def on_decision(msg: Any) -> None:
        event_id, outcome, final = decision(msg.value())
        if event_id in answers:
            answers[event_id].append(f"{outcome}{'' if final else ' (interim)'}")

    read_topic(bootstrap, decisions_topic, on_decision)
    entries = [{"event_id": e, "missing": n, "records": where[e],
                "likely_undecided": where[e][-n:] if n <= len(where[e]) else where[e], "decisions": answers[e]}
               for e, n in chosen.items()]
    lines = worker_lines(logs, entries)
    for entry in entries:
        entry["worker_log_lines"] = lines.get(entry["event_id"], [])
    return entries
