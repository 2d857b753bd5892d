"""The chaos run's checks, its fault table and its report, without a stack (the run itself is in
tests/integration/test_chaos.py)."""
from __future__ import annotations

from collections import Counter

import pytest

from bench.chaos import faults, invariants, report


def test_accounted_names_missing_and_extra_finals_and_dead_letter_gaps():
    accepted = Counter({"a": 1, "b": 2, "c": 1, "held": 1})
    finals = Counter({"a": 1, "b": 1, "c": 2})
    out = invariants.accounted(accepted, finals, {"held"}, bad_accepted=3, dead_letters=2)
    messages = {v.message.split(" (")[0]: v.records for v in out}
    assert messages["accepted events without a final decision"] == ["b"]
    assert messages["events with more final decisions than accepted records"] == ["c"]
    assert any("3 bad records accepted, 2 dead-lettered" in v.message for v in out)
    assert invariants.accounted(Counter({"a": 2}), Counter({"a": 2}), set(), 1, 1) == []
    # an identical repeat (at least once) is told apart from a second, different fate
    fates = {"same": [("ROUTED", ("EMAIL",)), ("ROUTED", ("EMAIL",))], "differs": [("ROUTED", ()), ("DEDUPLICATED", ())]}
    out = invariants.accounted(Counter({"same": 1, "differs": 1}), Counter({"same": 2, "differs": 2}), set(), 0, 0, fates)
    assert {v.message.split(" (")[0]: v.records for v in out} == {
        invariants.DECIDED_AGAIN: ["same"], "events with more final decisions than accepted records": ["differs"]}


def test_once_at_provider_finds_a_second_message_and_a_sent_one_never_received():
    receipts = {"EMAIL": Counter({"d1": 1, "d2": 2}), "SMS": Counter({"d3": 1})}
    out = invariants.once_at_provider(receipts, {"EMAIL": {"d1", "d2"}, "SMS": {"d3", "d4"}})
    assert [(v.message.split(" (")[0], v.records) for v in out] == [
        ("EMAIL deliveries that reached the provider more than once", ["d2"]),
        ("SMS deliveries reported SENT that the provider never got", ["d4"])]
    assert invariants.once_at_provider({"PUSH": Counter({"p": 1})}, {"PUSH": {"p"}}) == []


def test_attempted_wants_a_request_per_channel_and_an_end_for_each_request():
    finals = {"e1": [("ROUTED", ("EMAIL", "PUSH"))], "e2": [("DEDUPLICATED", ())], "e3": [("BATCHED", ("INAPP",))]}
    requests = {"r1": ("EMAIL", "SINGLE", ("e1",)), "r2": ("INAPP", "BATCH", ("e3", "e9")), "r3": ("PUSH", "SINGLE", ("e7",))}
    statuses = {"r1": [("RETRYING", "503"), ("SENT", None)], "r2": [("DEAD", None)], "r3": [("RETRYING", "503")]}
    out = {v.message.split(" (")[0]: v.records for v in invariants.attempted(finals, requests, statuses)}
    assert out == {"final decisions with a channel no delivery request carries": ["e1/PUSH"],
                   "delivery requests that never ended SENT, SUPPRESSED or DEAD": ["r3"],
                   "deliveries DEAD without a reason": ["r2"]}
    # a request first read after the run settled (a held event released once the stream stopped) may still
    # be on its way: not "never ended"; one read before it settled still is
    late = invariants.attempted(finals, requests, statuses, in_flight={"r3"})
    assert "never ended" not in " ".join(v.message for v in late)


def test_inbox_and_recovery_checks():
    assert invariants.inbox_counts([], {"n1"}, {"n1", "n2"}) == []
    out = invariants.inbox_counts(["u1"], {"n1", "n3"}, {"n1"})
    assert [v.records for v in out] == [["u1"], ["n3"]]
    runs = [{"name": "kill-worker", "round": 1, "recovery_s": 4.0}, {"name": "kill-api", "round": 1, "recovery_s": None},
            {"name": "broker-restart", "round": 2, "recovery_s": 31.0}, {"name": "disk-full", "round": 1, "skipped": "no tmpfs"}]
    (slow,) = invariants.recovered(runs)
    assert slow.records == ["broker-restart#2: 31.0 s", "kill-api#1: never"]


def test_the_matrix_has_every_fault_the_issue_names_and_a_sign_of_work_for_each():
    names = {f.name for f in faults.MATRIX}
    assert {"kill-worker", "kill-sink-inapp", "kill-sink-email", "kill-sink-push", "kill-sink-sms", "kill-api",
            "zombie-worker", "broker-restart", "postgres-restart", "registry-restart", "provider-outage",
            "second-worker", "disk-full"} == names
    for fault in faults.MATRIX:
        assert fault.signals and all(s in ("decisions", "api") or s.split(":")[1] in ("INAPP", "EMAIL", "PUSH", "SMS")
                                     for s in fault.signals)
    assert [f.name for f in faults.by_name("kill-api, disk-full")] == ["kill-api", "disk-full"]
    with pytest.raises(SystemExit, match="unknown fault"):
        faults.by_name("kill-everything")


def test_the_report_table_and_reliability_md_keep_the_text_above_the_marker(tmp_path):
    run = {"run_id": "abc", "started_at": "2026-12-04T00:00:00+00:00", "rounds": 2, "quick": False, "rate": 30,
           "seconds": 600.0, "held": True, "violations": [],
           "faults": [{"name": "kill-worker", "round": 1, "recovery_s": 2.0}, {"name": "kill-worker", "round": 2, "recovery_s": 6.0},
                      {"name": "disk-full", "round": 1, "skipped": "no tmpfs"}],
           "inputs": {"events_accepted": 10, "bad_accepted": 1}, "outputs": {"final_decisions": 10, "dead_letters": 1}}
    rows = {r["fault"]: r for r in report.by_fault(run)}
    assert rows["kill-worker"]["times"] == 2 and rows["kill-worker"]["worst_s"] == 6.0
    assert rows["disk-full"]["times"] == 0 and rows["disk-full"]["skip_reason"] == "no tmpfs"
    path = tmp_path / "RELIABILITY.md"
    path.write_text("# Reliability\n\nHow to read this.\n")
    report.record(run, path)
    report.record({**run, "run_id": "def"}, path)
    text = path.read_text()
    assert text.startswith("# Reliability\n\nHow to read this.\n") and text.count(report.MARKER) == 1
    assert "`def`" in text and "`abc`" not in text and "| kill-worker | 2 | 4.0 s | 6.0 s | yes |" in text
    assert "code at" not in text  # a run that knows no commit says none
    report.record({**run, "git": {"commit": "36b36f9d0e1f", "dirty": True}}, path)
    assert "10.0 min, code at `36b36f9` with local changes. Invariants: **all held**." in path.read_text()


def test_a_fault_due_while_its_process_is_not_up_is_skipped_with_the_reason(monkeypatch):
    """The supervisor may be restarting the process (a crash loop): killing a stale pid is not a fault."""
    from types import SimpleNamespace

    monkeypatch.setattr(faults, "UP_WAIT_S", 0)
    stack = SimpleNamespace(wait_up=lambda name, timeout: False, state=lambda name: "restarting",
                            pid=lambda name: 424242)
    ctx = SimpleNamespace(stack=stack)
    kill = next(f for f in faults.MATRIX if f.name == "kill-worker")
    assert kill.inject(ctx) == {"skipped": "worker was not up within 0 s (state: restarting)"}
    zombie = next(f for f in faults.MATRIX if f.name == "zombie-worker")
    assert zombie.inject(ctx) == {"skipped": "worker was not up within 0 s (state: restarting)"}
    gone = SimpleNamespace(stack=SimpleNamespace(wait_up=lambda name, timeout: True, state=lambda name: "up",
                                                 pid=lambda name: 2 ** 22 + 7))  # no such process
    assert kill.inject(gone)["skipped"].endswith("was gone when it was due to be killed")



def test_the_tap_stops_reading_before_the_checks_read_it():
    """The checks iterate the tap's dicts; a tap still adding statuses meanwhile broke a x3 run's check."""
    from bench.chaos.tap import Tap
    from herald.settings import Settings
    from schemas.codec import Codec

    tap = Tap(Settings.from_env(kafka_bootstrap="127.0.0.1:1", topic_prefix="freeze-test."), Codec(registry=None))  # type: ignore[arg-type]
    assert tap.is_alive()
    tap.freeze(timeout_s=10)
    assert not tap.is_alive()


def test_the_chaos_run_checks_the_workers_default_mode_unless_told_at_least_once():
    from bench.chaos.__main__ import parser
    from bench.chaos.stack import SETTINGS
    from herald.settings import Settings

    assert "HERALD_EXACTLY_ONCE" not in SETTINGS  # the stack's env sets it from the option alone
    assert parser().parse_args([]).exactly_once is Settings().exactly_once is True
    assert parser().parse_args(["--exactly-once"]).exactly_once is True
    assert parser().parse_args(["--at-least-once"]).exactly_once is False
    with pytest.raises(SystemExit):
        parser().parse_args(["--exactly-once", "--at-least-once"])


def test_with_exactly_once_a_bad_record_dead_lettered_twice_breaks_the_run():
    from bench.chaos.run import finish

    def judged(exactly_once: bool, repeated: int) -> dict:
        return finish({"inputs": {}, "faults": [], "violations": [], "exactly_once": exactly_once,
                       "repeats": {"dead_letters_repeated": repeated}})

    assert judged(True, 0)["held"] is True
    broken = judged(True, 2)
    assert broken["held"] is False and "2 dead letters repeated" in broken["violations"][0]["message"]
    assert judged(False, 2)["held"] is True  # at least once: a batch decided again may dead-letter again
