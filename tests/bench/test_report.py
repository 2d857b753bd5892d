"""BENCHMARKS.md and the chart from a results file, with no server: targets, verdicts, skipped figures."""
from __future__ import annotations

import builtins
import copy
import json

import pytest

from bench import report


def sample() -> dict:
    """A results file as ``herald bench`` writes it (the shape of a real --quick run, figures chosen)."""
    return {
        "run_id": "20261123T220709Z-c87d", "started_at": "2026-11-23T22:07:09Z", "finished_at": "2026-11-23T22:08:14Z",
        "total_s": 754.2, "results_file": "bench/results/bench-20261123T220709Z-c87d.json",
        "git": {"commit": "7345ba2ed1aca6acfb852b9ce7f522b0fef01512", "branch": "main", "dirty": False},
        "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "memory_gb": 23.5, "os": "Linux 6.18", "python": "3.11.7",
                    "load_before": [1.37, 1.0, 0.87], "load_after": [2.03, 1.3, 0.99]},
        "stack": {"source": "servers already running"},
        "options": {"command_line": "herald bench --events 200000 --digest-users 100000"},
        "figures": {
            "workload_events": 200_000, "workload_users": 100_000, "workload_duplicates": 19_800,
            "workload_preferences": 20_000, "pipeline_events_decided": 200_000, "pipeline_startup_s": 3.3,
            "pipeline_all_final_s": 131.0, "pipeline_worker_rss_mb": 410.0,
            "pipeline_events_per_s": 1719.7, "pipeline_overall_events_per_s": 1271.6,
            "passthrough_events_per_s": 443391.5, "quix_events_per_s": 6873.0, "quix_version": "3.28.1",
            "pipeline_vs_passthrough_ratio": 0.0039, "pipeline_vs_quix_ratio": 0.25,
            "critical_p50_ms": 31.2, "critical_p95_ms": 44.0, "critical_p99_ms": 48.5, "critical_samples": 4_300,
            "critical_stream_events_per_s": 860.0, "critical_p50_by_quarter_ms": [30.1, 31.0, 32.2, 31.5],
            "digest_users_requested": 100_000, "digest_users": 100_000, "digest_period_s": 120,
            "digest_ingest_events_per_s": 2033.0, "digest_s": 12.5, "digest_first_s": 0.9, "digests_per_s": 8000.0,
            "unread_p50_ms": 0.8, "unread_p99_ms": 3.9, "unread_target_requests_per_s": 5000,
            "unread_requests_per_s": 4999.1, "unread_errors": 0,
            "worker_rss_mb": 517.3, "worker_state_users": 100_000, "recovery_s": 10.74, "recovery_ready_s": 10.55,
        },
        "skipped": {}, "notes": ["Something worth knowing."], "errors": {},
        "phase_s": {"stack": 0.2, "workload": 1.5, "Herald pipeline": 130.0},
        "phase_load_1min": {"stack": 1.2, "workload": 1.37},
    }


def row(text: str, key: str) -> str:
    [line] = [line for line in text.splitlines() if f"(`{key}`)" in line]
    return line


def test_every_headline_figure_has_a_row_with_its_value_and_target():
    text = report.render_markdown(sample(), "bench/results/chart.png")
    for key in report.HEADLINE:
        assert f"(`{key}`)" in text, key
    assert "| 1,720 events/s | ≥ 20,000 events/s | **no** |" in row(text, "pipeline_events_per_s")
    assert "443,391 events/s" in row(text, "passthrough_events_per_s") or "443,392 events/s" in row(text, "passthrough_events_per_s")
    assert "| 48.5 ms | ≤ 50 ms at half load | yes |" in row(text, "critical_p99_ms")
    assert "| 3.90 ms | ≤ 5 ms at 5,000 req/s | yes |" in row(text, "unread_p99_ms")
    assert "| 0.25× | ≥ 1 (at least the peer) | **no** |" in row(text, "pipeline_vs_quix_ratio")
    assert row(text, "recovery_s").endswith("| 10.7 s | ≤ 15 s | yes |")
    assert row(text, "worker_rss_mb").endswith("| ≤ 400 MB for 1,000,000 users | n/a |")  # 100,000 users only
    assert "![benchmark chart](bench/results/chart.png)" in text


def test_ratios_machine_notes_phases_and_reproduction_are_stated():
    text = report.render_markdown(sample())
    assert "Herald / raw ceiling: **0.0039×** (1,720 events/s against 443,392 events/s)" in text
    assert "Herald / Quix Streams peer: **0.25×** (1,720 events/s against 6,873 events/s, Quix Streams 3.28.1)" in text
    assert "2 cores (AMD EPYC), 23.5 GB of memory" in text
    assert "before: 1.37, 1.00, 0.87; after: 2.03, 1.30, 0.99" in text
    assert "- Something worth knowing." in text
    assert "| stack | 0.2 | 1.20 |" in text and "| Herald pipeline | 130.0 | — |" in text and "| **total** | **754.2** | |" in text
    assert "took 12 min 34 s, commit `7345ba2ed1ac`." in text
    assert "`herald bench --events 200000 --digest-users 100000`" in text
    assert "## Chart" not in text  # no chart was made


def test_the_critical_stream_says_whether_its_rate_was_half_herald_s_or_fixed():
    results = sample()
    assert "mixed stream at 860 events/s (half Herald's measured rate)" in report.render_markdown(results)
    results["figures"]["critical_stream_rate_fixed"] = True
    assert "mixed stream at 860 events/s (fixed by --latency-rate)" in report.render_markdown(results)


def test_a_smaller_digest_run_asked_for_is_not_comparable_but_one_cut_by_the_budget_is_a_miss():
    results = sample()
    text = report.render_markdown(results)
    assert row(text, "digest_s").endswith("| n/a |")  # the 60 s target is for a million users
    assert row(text, "digest_users").endswith("| n/a |")
    assert row(text, "digests_per_s").endswith("| **no** |")  # 8,000/s < 16,667/s whatever the scale
    cut = copy.deepcopy(results)
    cut["figures"]["digest_users_requested"] = 1_000_000
    assert row(report.render_markdown(cut), "digest_users").endswith("| **no** |")
    full = copy.deepcopy(results)
    full["figures"].update(digest_users_requested=1_000_000, digest_users=1_000_000, digest_s=55.0, digests_per_s=18_181.8)
    text = report.render_markdown(full)
    assert row(text, "digest_s").endswith("| yes |") and row(text, "digest_users").endswith("| yes |")
    assert row(text, "digests_per_s").endswith("| yes |")


def test_the_digest_line_says_whether_the_workers_were_ready_before_the_period_ended():
    results = sample()
    assert "before the period ended" in report.render_markdown(results)  # results of before the margin was kept
    results["figures"].update(digest_ready_before_end_s=21.4)
    assert "and were ready 21.4 s before the period ended;" in report.render_markdown(results)
    results["figures"].update(digest_ready_before_end_s=-36.0, digest_probe_users=100_000,
                              digest_probe_states_per_s=21_404.2)
    text = report.render_markdown(results)
    assert ("and were ready only 36.0 s after the period ended, so digest_s includes that (the period fitted to a "
            "sample of 100,000 states seeded first at 21,404 states/s)") in text
    assert "before the period ended" not in text


def test_the_release_s_cores_are_stated_when_measured():
    results = sample()
    assert "While the digests went out" not in report.render_markdown(results)  # a run from before they were
    results["figures"].update(digest_machine_busy_pct=97.6, digest_workers_cores=1.52, digest_broker_cores=0.31,
                              digest_bench_cores=0.05, digest_worker_cpu_us_per_digest=137.4)
    text = report.render_markdown(results)
    assert ("- While the digests went out, 97.6 % of the machine's cores were busy: Herald's workers used 1.52 cores "
            "(137 µs of CPU a digest), the broker 0.31 cores and the bench's reader 0.05 cores.") in text
    assert "| 1.52 cores |" in row(text, "digest_workers_cores")


def test_worker_memory_is_judged_for_a_million_users_state():
    results = sample()
    results["figures"].update(worker_state_users=1_000_000, worker_rss_mb=399.0)
    assert row(report.render_markdown(results), "worker_rss_mb").endswith("| 399 MB | ≤ 400 MB for 1,000,000 users | yes |")
    results["figures"]["worker_rss_mb"] = 411.0
    assert row(report.render_markdown(results), "worker_rss_mb").endswith("| **no** |")


def test_unread_latency_below_the_target_rate_is_not_comparable():
    results = sample()
    results["figures"]["unread_target_requests_per_s"] = 1000
    assert row(report.render_markdown(results), "unread_p99_ms").endswith("| n/a |")


def test_skipped_figures_say_why_and_the_summary_counts_targets():
    results = sample()
    results["figures"].update(quix_events_per_s=None, pipeline_vs_quix_ratio=None, unread_p50_ms=None, unread_p99_ms=None)
    results["skipped"] = {"quix_events_per_s": "--skip-peer", "pipeline_vs_quix_ratio": "quix_events_per_s not measured: --skip-peer",
                          "unread_p50_ms": "--skip-api", "unread_p99_ms": "--skip-api"}
    text = report.render_markdown(results)
    assert "| not measured: --skip-peer |" in row(text, "quix_events_per_s")
    assert row(text, "pipeline_vs_quix_ratio").endswith("| n/a |")
    assert "| not measured: --skip-api |" in row(text, "unread_p99_ms")
    assert "- Not measured, `unread_p99_ms`: --skip-api" in text
    assert "Unread-count API:" not in text  # no line about a phase that did not run
    assert "2 of 9 targets met (5 not comparable at this scale)" in text


def test_fmt():
    assert report.fmt(None) == "—"
    assert report.fmt(1719.7, "events/s") == "1,720 events/s"
    assert report.fmt(443391, "events/s") == "443,391 events/s"
    assert report.fmt(48.53, "ms") == "48.5 ms"
    assert report.fmt(3.9, "ms") == "3.90 ms"
    assert report.fmt(0.0039, "×") == "0.0039×"
    assert report.fmt(150.4, "MB") == "150 MB"
    assert report.fmt(True) == "True"


def test_without_matplotlib_the_markdown_is_written_and_the_hint_says_how(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    said: list[str] = []
    made = report.write(sample(), tmp_path / "BENCHMARKS.md", tmp_path / "results" / "chart.png", say=said.append)
    assert made == {"markdown": str(tmp_path / "BENCHMARKS.md"), "chart": None}
    assert not (tmp_path / "results" / "chart.png").exists()
    assert "pip install -e '.[bench]'" in said[0]
    assert "(`pipeline_events_per_s`)" in (tmp_path / "BENCHMARKS.md").read_text()


def test_chart_is_a_png_linked_from_the_markdown(tmp_path):
    pytest.importorskip("matplotlib")
    made = report.write(sample(), tmp_path / "BENCHMARKS.md", tmp_path / "results" / "chart.png")
    assert (tmp_path / "results" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert made["chart"] == str(tmp_path / "results" / "chart.png")
    assert "![benchmark chart](results/chart.png)" in (tmp_path / "BENCHMARKS.md").read_text()


def test_chart_draws_with_figures_missing(tmp_path):
    pytest.importorskip("matplotlib")
    results = sample()
    results["figures"] = {k: None for k in results["figures"]}
    assert report.chart(results, tmp_path / "c.png") == tmp_path / "c.png"


def test_command_line_renders_a_results_file(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(sample()))
    assert report.main([str(path), "--markdown", str(tmp_path / "B.md"), "--chart", str(tmp_path / "c.png")]) == 0
    assert json.loads(capsys.readouterr().out)["markdown"] == str(tmp_path / "B.md")
    assert "| 48.5 ms |" in (tmp_path / "B.md").read_text()


def test_rendering_again_keeps_the_hand_written_log_of_other_runs(tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"old generated part\n{report.KEEP_MARKER}\n## Sinks\n| email | 530/s |\n")
    report.write(sample(), markdown, tmp_path / "chart.png")
    text = markdown.read_text()
    assert "old generated part" not in text and "(`pipeline_events_per_s`)" in text
    assert text.endswith(f"{report.KEEP_MARKER}\n## Sinks\n| email | 530/s |\n")
    report.write(sample(), markdown, tmp_path / "chart.png")
    assert markdown.read_text().count(report.KEEP_MARKER) == 1


def test_the_outputs_of_herald_and_the_peer_are_compared_by_outcome():
    from bench.report import outputs_compared

    same = outputs_compared({"ROUTED": 600, "BATCHED": 300, "DEDUPLICATED": 100},
                            {"ROUTED": 6000, "BATCHED": 3000, "DEDUPLICATED": 1000})
    assert same.startswith("Outputs: the same decisions on both sides")
    differ = outputs_compared({"ROUTED": 100, "DIGESTED": 400, "DEDUPLICATED": 100},
                              {"ROUTED": 500, "DEDUPLICATED": 100})
    assert "**not the same job**" in differ and "only Herald decided DIGESTED" in differ
    shifted = outputs_compared({"ROUTED": 500, "BATCHED": 500}, {"ROUTED": 700, "BATCHED": 300})
    assert "**not the same job**" in shifted and "only Herald" not in shifted


def test_the_event_by_event_comparison_is_stated_before_the_shares():
    from bench.report import decisions_compared, render_markdown

    assert decisions_compared({}) is None  # a results file from before it
    alike = {"outputs_events_compared": 96_664, "outputs_events_alike": 96_664, "outputs_differences": {}}
    assert decisions_compared(alike) == ("Outputs: the same first decision on every one of the 96,664 events both "
                                         "sides decided.")
    differ = decisions_compared({"outputs_events_compared": 96_664, "outputs_events_alike": 96_662,
                                 "outputs_differences": {"THROTTLED / ROUTED": 2},
                                 "outputs_difference_examples": ["e-1", "e-2"]})
    assert "**not the same job**" in differ and "2 were decided otherwise" in differ
    assert "THROTTLED / ROUTED 2; e.g. e-1, e-2" in differ
    results = sample()
    results["figures"].update(alike, pipeline_outcomes_first={"ROUTED": 10}, quix_outcomes={"ROUTED": 1})
    text = render_markdown(results)
    assert "the same first decision on every one of the 96,664" in text
    assert "the same decisions on both sides (by outcome" not in text


def test_the_requests_of_both_sides_are_listed_by_channel():
    from bench.report import requests_compared

    line = requests_compared({"INAPP": 9000, "PUSH": 2500, "SMS": 1500, "EMAIL": 3000},
                             {"INAPP": 2700, "PUSH": 600, "SMS": 450, "EMAIL": 900}, 10_000, 3_000)
    assert "INAPP 0.900 / 0.900" in line and "SMS 0.150 / 0.150" in line and "PUSH 0.250 / 0.200" in line
    assert "16,000 and 4,650 requests" in line


def test_several_peer_processes_add_up_over_the_span_of_all_their_decisions():
    from bench.peers.quix_peer import _combined

    a = {"events": 600, "outcomes": {"ROUTED": 400, "BATCHED": 200}, "released": 10, "seconds": 9.0,
         "events_per_s": 66.7, "outputs": 600, "startup_s": 0.5, "shutdown_s": 1.0, "complete": False,
         "first_wall": 1000.0, "last_wall": 1009.0, "quixstreams": "3.28.1"}
    b = {**a, "events": 400, "outcomes": {"ROUTED": 300, "DEDUPLICATED": 100}, "released": 5,
         "first_wall": 1001.0, "last_wall": 1010.0, "startup_s": 1.5, "shutdown_s": 2.0, "gave_up": "idle"}
    both = _combined([a, b])
    assert both["events"] == 1000 and both["seconds"] == 10.0 and both["events_per_s"] == 100.0
    assert both["outcomes"] == {"ROUTED": 700, "BATCHED": 200, "DEDUPLICATED": 100} and both["released"] == 15
    assert both["startup_s"] == 0.5 and both["shutdown_s"] == 2.0 and both["gave_up"] == "idle"
