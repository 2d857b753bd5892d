"""``herald bench``: its options and helpers with no server, and one --quick run end to end on the real stack."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from bench import run
from bench.report import HEADLINE
from schemas.codec import Codec
from schemas.loader import parsed
from schemas.registry import Registry


class CachedOnly(Registry):
    """The real Registry with its id cache filled in, and no server behind it."""

    def __init__(self):
        super().__init__(url="http://127.0.0.1:9/unused", missing_retries=0)
        for schema_id, (subject, name) in {51: ("d-value", "Decision"), 52: ("r-value", "DeliveryRequest")}.items():
            self._ids[(subject, name)] = schema_id
            self._writers[schema_id] = parsed(name)


# -- no server --------------------------------------------------------------------------------------

def test_help_teaches_what_it_measures_how_long_and_the_options(capsys):
    from streams.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in ("--events", "--users", "--digest-users", "--skip-peer", "--skip-api", "--quick", "--out",
                 "passthrough_events_per_s", "quix_events_per_s", "pipeline_events_per_s", "critical_p50/p95/p99_ms",
                 "digest_s", "unread_p50_ms", "recovery_s", "worker_rss_mb", "15 minutes", "one-minute"):
        assert word in text, word


def test_the_top_level_help_lists_bench(capsys):
    from streams.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out


def test_quick_sets_small_numbers_and_explicit_options_win(tmp_path):
    opts = run.options_from(["--quick", "--events", "7000", "--skip-peer", "--out", str(tmp_path)])
    assert (opts.events, opts.users, opts.digest_users, opts.budget_min) == (7000, 1000, 2000, 0.0)
    assert opts.skip_peer and not opts.skip_api
    assert opts.markdown_path() == tmp_path / "BENCHMARKS.md"  # not the repository's when --out is elsewhere
    assert opts.command_line == f"herald bench --quick --events 7000 --skip-peer --out {tmp_path}"
    default = run.options_from([])
    assert (default.events, default.users, default.digest_users, default.budget_min) == (1_000_000, 100_000, 1_000_000, 15.0)
    assert default.markdown_path() == run.MARKDOWN
    assert default.latency_rate is None and run.options_from(["--latency-rate", "2000"]).latency_rate == 2000.0
    with pytest.raises(SystemExit):
        run.options_from(["--events", "0"])


def test_rates_percentiles_and_trend():
    assert run.steady_rate([1000 + i for i in range(1001)]) == 1000.0  # one event a millisecond
    assert run.steady_rate([5] * 10) is None
    values = sorted(float(v) for v in range(1, 101))
    assert (run.percentile(values, 50), run.percentile(values, 99), run.percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert run.percentile([], 50) is None
    assert run.latency_trend({f"crit-{k}": float(k) for k in range(8)}) == [0.0, 2.0, 4.0, 6.0]
    assert (run.round_down_nicely(123_456), run.round_down_nicely(99), run.round_down_nicely(0)) == (120_000, 99, 1)


def test_the_pipeline_phase_leaves_the_later_phases_what_they_need_but_never_takes_under_40_percent(monkeypatch):
    bench = run.Run(run.options_from([]), run.Console())
    need = bench.after_pipeline_s()
    # a million digest users at the rates the budget assumes, the latency stream, recovery and the API
    assert 300 < need < 500
    assert bench.digest_need_s(1_000_000) > bench.digest_need_s(100_000)
    for left, expected in ((800.0, 800.0 - need), (500.0, 200.0), (100.0, 60.0)):
        monkeypatch.setattr(bench, "left_s", lambda left=left: left)
        assert bench.pipeline_limit_s() == pytest.approx(expected)
    fewer = run.Run(run.options_from(["--digest-users", "100000", "--skip-api"]), run.Console())
    monkeypatch.setattr(fewer, "left_s", lambda: 800.0)
    assert fewer.pipeline_limit_s() > 800.0 - need  # fewer digests to make: more time for the pipeline
    unbudgeted = run.Run(run.options_from(["--budget-min", "0"]), run.Console())
    assert unbudgeted.pipeline_limit_s() == float("inf")


def test_the_chosen_digest_period_starts_soon_after_the_worker_is_ready():
    for ready_at in (1_795_000_000.3, 1_795_000_123.9, 1_795_004_567.0):
        period = run.choose_period(100, ready_at)
        assert 100 <= period <= 133
        assert (-ready_at) % period < 10  # the best of 34 candidates: a boundary within seconds


def test_heads_read_what_the_codec_reads():
    codec = Codec(CachedOnly())
    heads = run.Heads(codec)
    rng = random.Random(3)
    for i in range(300):
        decision = {"event_id": f"ev-{i}-" + "x" * rng.randrange(80), "user_id": f"user-{i}",
                    "outcome": rng.choice(heads.outcomes),
                    "channels": rng.sample(["EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET"], rng.randrange(6)),
                    "delivery_id": rng.choice([None, "d" * rng.randrange(1, 70)]), "reason": "r" * rng.randrange(200),
                    "at": rng.randrange(2**45), "final": rng.random() < 0.5, "release_at": rng.choice([None, 12345])}
        value = codec.encode("d-value", "Decision", decision)
        assert heads.decision(value) == (decision["event_id"].encode(), heads.outcomes.index(decision["outcome"]),
                                         decision["final"])
        request = {"delivery_id": f"d-{i}", "user_id": f"user-{i}", "channel": "EMAIL", "kind": rng.choice(heads.kinds),
                   "event_ids": [f"ev-{i}"], "type": "DIGEST", "priority": "LOW", "title": "t", "body": "b",
                   "data": {}, "created_at": 1}
        assert heads.kind(codec.encode("r-value", "DeliveryRequest", request)) == heads.kinds.index(request["kind"])


def test_heads_fall_back_to_the_codec_for_a_layout_they_misread(monkeypatch):
    codec = Codec(CachedOnly())
    heads = run.Heads(codec)
    monkeypatch.setattr(run.Heads, "_decision_fast", staticmethod(lambda v: (b"wrong", 0, False)))
    value = codec.encode("d-value", "Decision", {"event_id": "e1", "user_id": "u1", "outcome": "ROUTED", "channels": [],
                                                  "delivery_id": None, "reason": "", "at": 1, "final": True})
    assert heads.decision(value) == (b"e1", heads.outcomes.index("ROUTED"), True)
    assert heads.decision(value) == (b"e1", heads.outcomes.index("ROUTED"), True)  # the verdict is remembered


def test_decided_counts_each_input_once_including_resent_duplicates():
    codec = Codec(CachedOnly())
    heads = run.Heads(codec)

    class Msg:
        def __init__(self, event_id, outcome, final, ts):
            self._v = codec.encode("d-value", "Decision", {"event_id": event_id, "user_id": "u", "outcome": outcome,
                                                           "channels": [], "delivery_id": None, "reason": "", "at": ts,
                                                           "final": final})
            self._ts = ts

        def value(self):
            return self._v

        def timestamp(self):
            return (1, self._ts)

    decided = run.Decided(heads)
    decided.handle([Msg("a", "BATCHED", False, 10), Msg("b", "ROUTED", True, 11),
                    Msg("a", "DEDUPLICATED", True, 12),  # a producer's retry of "a"
                    Msg("c", "DEDUPLICATED", True, 13),  # same dedup_key as "b": a new event_id
                    Msg("a", "BATCHED", True, 20)], 0)  # "a" final when its batch goes out
    assert decided.inputs == 4
    assert decided.first_ms == [10, 11, 12, 13]
    assert (decided.finals, decided.last_final_ms) == (4, 20)
    assert decided.first == {b"a": heads.outcomes.index("BATCHED"), b"b": heads.outcomes.index("ROUTED"),
                             b"c": heads.outcomes.index("DEDUPLICATED")}


def test_the_first_decisions_are_compared_event_by_event_on_the_events_both_decided():
    names = ["ROUTED", "BATCHED", "THROTTLED"]
    herald = {b"a": 0, b"b": 1, b"c": 2, b"d": 0}
    peer = {b"a": 0, b"b": 1, b"c": 0, b"e": 2}  # "d" only Herald decided, "e" only the peer
    assert run.first_decisions_compared(herald, peer, names) == {
        "outputs_events_compared": 3, "outputs_events_alike": 2, "outputs_differences": {"THROTTLED / ROUTED": 1},
        "outputs_difference_examples": ["c"]}
    # equal shares of outcomes, different events: a comparison by shares would call this the same job
    swapped = run.first_decisions_compared({b"a": 0, b"b": 1}, {b"a": 1, b"b": 0}, names)
    assert swapped["outputs_events_alike"] == 0
    assert swapped["outputs_differences"] == {"ROUTED / BATCHED": 1, "BATCHED / ROUTED": 1}


# -- the real stack -----------------------------------------------------------------------------------

SKIPPED_BY_OPTIONS = {"quix_events_per_s", "pipeline_vs_quix_ratio", "unread_p50_ms", "unread_p99_ms"}


@pytest.mark.integration
def test_quick_run_end_to_end_writes_every_figure(stack, tmp_path):
    code = run.main(["--quick", "--skip-peer", "--skip-api", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "latest.json").read_text())
    assert code == 0, results["errors"]
    figures = results["figures"]
    for key in HEADLINE:
        if key in SKIPPED_BY_OPTIONS:
            assert figures[key] is None and results["skipped"][key], key
        else:
            assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures[key])
    assert results["skipped"]["quix_events_per_s"] == "--skip-peer"
    assert figures["pipeline_events_decided"] == figures["workload_events"] == 5_000
    assert figures["critical_samples"] == figures["critical_sent"] > 0
    assert figures["critical_warmup_s"] == 1.0 and figures["critical_floor_records"] > 0
    assert 0 < figures["critical_floor_p50_ms"] <= figures["critical_floor_p99_ms"]
    assert figures["critical_workers_cores"] > 0 and figures["critical_bench_cores"] > 0  # they decided and sent
    assert figures["critical_broker_cores"] > 0  # the bench started the broker, so it knows its process
    # the workers timed the events their lane decided ahead, and the bench read that from their /metrics
    assert figures["critical_worker_wait_events"] > 0  # (warm-up events decided after it started count too)
    assert 0 < figures["critical_worker_wait_p50_at_most_ms"] <= figures["critical_worker_wait_p99_at_most_ms"]
    assert figures["digest_users"] == figures["worker_state_users"] == figures["digests_emitted"] == 2_000
    # the release's cores: the workers' CPU while the digests went out (the broker's, over a release this short,
    # may round to nothing; it is measured when the bench knows the broker's process, as here)
    assert figures["digest_workers_cores"] > 0 and figures["digest_broker_cores"] is not None
    assert figures["digest_worker_cpu_us_per_digest"] > 0 and 0 < figures["digest_machine_busy_pct"] <= 100
    assert [p.name for p in tmp_path.glob("bench-*.json")] == [f"bench-{results['run_id']}.json"]
    assert results["machine"]["nproc"] >= 1 and len(results["machine"]["load_after"]) == 3
    assert results["git"]["commit"] and results["total_s"] > 0
    assert {"stack", "workload", "Herald pipeline", "CRITICAL latency", "digests", "recovery"} <= set(results["phase_s"])
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "(`pipeline_events_per_s`)" in markdown and "not measured: --skip-api" in markdown

    # nothing left behind: the benchmark's topics are deleted
    from confluent_kafka.admin import AdminClient

    from herald.settings import Settings

    topics = AdminClient({"bootstrap.servers": Settings.from_env().kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(figures["topic_prefix"])]


def test_a_crew_is_settled_once_its_members_last_assignments_share_out_every_partition(tmp_path):
    members = [run.Worker(name, {}, tmp_path) for name in ("a", "b")]
    crew = run.Crew(members)
    line = "[2026-12-06 10:56:01,189] [1] [INFO] reading partitions {} of t.events, t-ticks \n"
    members[0].log.write_text(line.format("[0, 1, 2, 3]"))
    assert members[0].reading() == [0, 1, 2, 3] and members[1].reading() is None
    with pytest.raises(RuntimeError, match="did not settle"):
        crew.wait_settled(4, timeout=0.3)  # b has not joined: a holds everything
    members[1].log.write_text(line.format("[0, 1]"))
    with pytest.raises(RuntimeError, match="did not settle"):
        crew.wait_settled(4, timeout=0.3)  # b has 0 and 1, but a has not given them up yet
    with members[0].log.open("a") as log:
        log.write(line.format("[2, 3]"))
    assert crew.wait_settled(4, timeout=5) < 5
    members[1].log.write_text(line.format("[]"))
    assert members[1].reading() == []


def test_the_bare_consumer_counts_as_ready_only_when_it_says_so(tmp_path):
    lag = run.BrokerLag("127.0.0.1:1", "t.events", tmp_path / "lag.json", committed=True)
    lag.argv = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(30)"]
    with pytest.raises(RuntimeError, match="did not print 'assigned'"):
        lag.start(timeout=10)
    assert not lag.is_alive()  # the process was stopped, not left behind
    lag.argv = [sys.executable, "-c", "import time; print('assigned', flush=True); time.sleep(30)"]
    assert lag.start(timeout=10).is_alive()
    assert lag.stop() == {}  # it wrote no summary: the bench reports the floor as not measured
    assert not lag.is_alive()


def test_the_machine_busy_share_counts_cpu_spent_since_a_reading():
    from bench.api_latency import machine_busy, machine_ticks

    before = machine_ticks()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass  # one core kept busy: at least 1/cores of the machine, whatever else runs
    share = machine_busy(before)
    assert 0.8 / os.cpu_count() <= share <= 1.0


def test_cores_by_group_count_each_groups_processes_and_leave_out_a_group_whose_process_went():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)  # past the interpreters' start-up
        cores = run.CoresBy({"spinning": [spinner.pid], "sleeping": [sleeper.pid], "gone": [gone.pid], "none": []})
        cores.start()
        gone.kill()
        gone.wait()
        time.sleep(1.0)
        used = cores.stop()
    finally:
        for proc in (spinner, sleeper):
            proc.kill()
            proc.wait()
    assert set(used) == {"spinning", "sleeping"} == set(cores.cpu_s)
    assert used["spinning"] >= 0.3 and used["sleeping"] <= 0.05
    assert cores.cpu_s["spinning"] == pytest.approx(used["spinning"] * cores.elapsed, abs=0.01 * cores.elapsed)


def test_the_digest_period_outlasts_the_seeding_restore_and_index_at_the_sampled_pace():
    # the multiples cover every machine measured: restore 3.2-4.0 times the seeding, the index under half
    for seed_s, restore_s, index_s in ((12.74, 50.02, 2.6), (37.9, 120.1, 16.3), (39.59, 134.93, 6.74),
                                       (27.9, 100.6, 7.1)):
        assert run.Run.digest_before_end_s(seed_s) > seed_s + restore_s + index_s
