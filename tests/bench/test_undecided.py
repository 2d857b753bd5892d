"""``bench.undecided``: naming the input records that have no decision (issue #12)."""
from __future__ import annotations

import uuid

import pytest

from bench import run, undecided
from bench.workload import FieldwiseEncoder, create_topics, delete_topics
from schemas.codec import Codec
from tests.bench.test_run import CachedOnly

EVENT = {"user_id": "u-1", "type": "COMMENT", "priority": "LOW", "title": "t", "body": "b", "data": {},
         "occurred_at": 1, "dedup_key": None, "batchable": True, "channels": None, "deliver_after": None,
         "cancel_key": None}


def event_value(event_id: str) -> bytes:
    return b"\x00\x00\x00\x00\x07" + FieldwiseEncoder("NotificationEvent").encode({**EVENT, "event_id": event_id})


def test_event_id_of_reads_the_first_field_and_refuses_what_is_not_an_event():
    assert undecided.event_id_of(event_value("ev1-42")) == "ev1-42"
    assert undecided.event_id_of(event_value("e" * 300)) == "e" * 300  # a multi-byte length
    for bad in (None, b"", b"\x00\x01", b'{"json": 1}', b"\x00\x00\x00\x00\x07\x7f"):
        assert undecided.event_id_of(bad) is None, bad


def test_compare_uses_the_benchmarks_counting_rule():
    records = {"a": [(0, 5)], "b": [(1, 7)], "c": [(2, 3), (2, 9)], "d": [(3, 1), (3, 4)], "e": [(0, 8)]}
    answers = {"a": [("BATCHED", False), ("BATCHED", True)],  # interim then final: one record answered
               "c": [("ROUTED", True), ("DEDUPLICATED", True)],  # a producer's retry, decided DEDUPLICATED
               "d": [("ROUTED", True), ("ROUTED", True)],  # decided again (a re-read), the retry never
               "e": [("DEDUPLICATED", True)]}  # same dedup_key as an earlier event
    found = undecided.compare(records, answers, inputs=7, decisions=7)
    assert (found["undecided_records"], found["undecided_event_ids"]) == (2, 2)
    by_id = {u["event_id"]: u for u in found["undecided"]}
    assert by_id["b"]["likely_undecided"] == [{"partition": 1, "offset": 7}] and by_id["b"]["decisions"] == []
    assert by_id["d"]["missing"] == 1 and by_id["d"]["likely_undecided"] == [{"partition": 3, "offset": 4}]
    assert by_id["d"]["records"] == [{"partition": 3, "offset": 1}, {"partition": 3, "offset": 4}]
    assert by_id["d"]["decisions"] == ["ROUTED", "ROUTED"]
    assert [u["event_id"] for u in found["undecided"]] == ["b", "d"]  # in partition, offset order
    assert undecided.compare(records, answers, limit=1)["undecided_event_ids"] == 2
    assert len(undecided.compare(records, answers, limit=1)["undecided"]) == 1


def test_worker_lines_name_the_event_id_or_its_offset(tmp_path):
    log = tmp_path / "pipeline.log"
    log.write_text("ready\n[ERROR] failed on bench.events:2@9: boom\nsomething about ev-7 here\nev-70 is another\n"
                   "bench.events:2@90 is not it\n")
    found = undecided.worker_lines([log, tmp_path / "missing.log"], [
        {"event_id": "ev-7", "records": [{"partition": 2, "offset": 9}]}])
    assert found == {"ev-7": ["pipeline.log: [ERROR] failed on bench.events:2@9: boom",
                              "pipeline.log: something about ev-7 here"]}


def test_the_option_to_delete_an_incomplete_runs_topics():
    assert run.options_from([]).delete_incomplete is False
    assert run.options_from(["--delete-incomplete"]).delete_incomplete is True


@pytest.mark.integration
def test_find_names_the_undecided_records_on_the_real_broker(stack):
    from confluent_kafka import Producer

    from herald.settings import Settings

    bootstrap = Settings.from_env().kafka_bootstrap
    prefix = f"undecided{uuid.uuid4().hex[:6]}."
    events, decisions = f"{prefix}events", f"{prefix}decisions"
    create_topics(bootstrap, [events, decisions], 2)
    codec = Codec(CachedOnly())
    heads = run.Heads(codec)
    try:
        producer = Producer({"bootstrap.servers": bootstrap})
        for i, p in [(0, 0), (1, 1), (2, 0), (1, 1), (3, 1)]:  # ev-1 twice: a producer's retry
            producer.produce(events, event_value(f"ev-{i}"), b"u-1", partition=p)
        producer.produce(events, b"\x00\x01", b"u-1", partition=0)  # a bad record: a dead letter's, not counted
        for event_id, outcome in [("ev-0", "ROUTED"), ("ev-1", "ROUTED"), ("ev-3", "ROUTED")]:
            producer.produce(decisions, codec.encode("d-value", "Decision", {
                "event_id": event_id, "user_id": "u-1", "outcome": outcome, "channels": [], "delivery_id": None,
                "reason": "", "at": 1, "final": True}), b"u-1")
        assert producer.flush(30) == 0
        found = undecided.find(bootstrap, events, decisions, heads.decision, heads.outcomes)
        assert (found["inputs"], found["decisions"]) == (6, 3)
        assert found["undecided_records"] == 2
        assert [(u["event_id"], u["likely_undecided"]) for u in found["undecided"]] == [
            ("ev-2", [{"partition": 0, "offset": 1}]), ("ev-1", [{"partition": 1, "offset": 1}])]
    finally:
        delete_topics(bootstrap, lambda t: t.startswith(prefix))
