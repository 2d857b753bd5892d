"""BENCHMARKS.md and the chart, made from one ``herald bench`` results file.

``herald bench`` calls ``write(results, markdown_path, chart_path)`` at the end of a run; to render an
older run again (after changing this file, say):

    python -m bench.report bench/results/latest.json            # BENCHMARKS.md + bench/results/chart.png
    python -m bench.report run.json --markdown /tmp/B.md --chart /tmp/c.png

Every row of the table is one figure of the results' ``figures`` with its target from ``bench/targets.py``,
if any, and whether this run met it: ``yes``, ``no``, ``—`` (no target) or ``n/a`` (not
comparable: measured at a smaller scale or lower request rate than the target names). A figure the run
did not measure says so, with the reason from the results' ``skipped``. The chart needs matplotlib (the
``bench`` extra: ``pip install -e '.[bench]'``); without it the markdown is written all the same and
``chart`` returns None.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.targets import BY_FIGURE, DIGEST_USERS, UNREAD_RATE

CHART_HINT = "the chart needs matplotlib: .venv/bin/pip install -e '.[bench]' (or pip install matplotlib)"
FULL_DIGEST_USERS = DIGEST_USERS
TARGET_EVENTS_PER_S = BY_FIGURE["pipeline_events_per_s"].value
TARGET_CRITICAL_P99_MS = BY_FIGURE["critical_p99_ms"].value
TARGET_DIGEST_S = BY_FIGURE["digest_s"].value
TARGET_UNREAD_P99_MS = BY_FIGURE["unread_p99_ms"].value
TARGET_UNREAD_RATE = UNREAD_RATE


def outputs_compared(herald: dict, quix: dict) -> str:
    """Whether Herald and the peer made the same decisions, by outcome (each side's first decision per event):
    a ratio of rates means something only when they did the same job."""
    def share(counts: dict) -> dict:
        total = sum(counts.values()) or 1
        return {k: v / total for k, v in counts.items()}

    h, q = share(herald), share(quix)
    only_herald = sorted(k for k in h if k not in q)
    same = not only_herald and all(abs(h.get(k, 0) - q.get(k, 0)) < 0.01 for k in set(h) | set(q))
    listing = lambda counts: ", ".join(f"{k} {v:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))  # noqa: E731
    if same:
        return f"Outputs: the same decisions on both sides (by outcome: {listing(h)})."
    return (f"Outputs: **not the same job** — Herald's decisions by outcome: {listing(h)}; the peer's: {listing(q)}"
            + (f"; only Herald decided {', '.join(only_herald)} (the peer does Herald's job for users with no "
               "preferences record: a workload with them is another job)" if only_herald else "")
            + ". The ratio compares unequal work.")


def decisions_compared(figures: dict) -> str | None:
    """Whether Herald and the peer decided alike, event by event (``first_decisions_compared`` in bench/run.py);
    None for a results file from before that comparison."""
    both = figures.get("outputs_events_compared")
    if both is None:
        return None
    alike = figures.get("outputs_events_alike") or 0
    if not both:
        return "Outputs: no event was decided by both sides, so the decisions could not be compared."
    if alike == both:
        return f"Outputs: the same first decision on every one of the {both:,} events both sides decided."
    differences = figures.get("outputs_differences") or {}
    listing = ", ".join(f"{k} {v:,}" for k, v in differences.items())
    examples = figures.get("outputs_difference_examples") or []
    return (f"Outputs: **not the same job** — of the {both:,} events both sides decided, {both - alike:,} "
            f"were decided otherwise (Herald / the peer: {listing}"
            + (f"; e.g. {', '.join(examples[:3])}" if examples else "") + "). The ratio compares unequal work.")


def requests_compared(herald: dict, quix: dict, herald_events: float, quix_events: float) -> str:
    """Each side's delivery requests by channel when it stopped, per event it decided (the two may decide different
    numbers of events): the parts sent at once, and the batches, digests and throttled parts released by then
    (windows close on the clock, so those depend on how long each ran)."""
    channels = [c for c in herald if c in quix]

    def per(n: int, events: float) -> str:
        return f"{n / events:.3f}" if events else "n/a"
    return ("Delivery requests by the time each side stopped, per event decided, Herald / the peer: "
            + ", ".join(f"{c} {per(herald[c], herald_events)} / {per(quix[c], quix_events)}" for c in channels)
            + f" ({sum(herald.values()):,} and {sum(quix.values()):,} requests; in-app and SMS parts go at once, "
            "push and email also hold the windows each side had closed).")

def _shown(key: str) -> str:
    return BY_FIGURE[key].shown


def _num(figures: dict, key: str) -> float | None:
    value = figures.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _target(key: str) -> Callable[[dict], bool | None]:
    """The verdict of ``key``'s target in ``bench/targets.py`` at any scale (None: not measured)."""
    target = BY_FIGURE[key]
    return lambda f: None if _num(f, key) is None else target.met(_num(f, key))


def _digest_s_met(f: dict) -> bool | None:
    users, seconds = _num(f, "digest_users"), _num(f, "digest_s")
    if users is None or seconds is None or users < FULL_DIGEST_USERS:
        return None  # the target is for a million users; a smaller run is judged by its rate below
    return BY_FIGURE["digest_s"].met(seconds)


def _digest_users_met(f: dict) -> bool | None:
    users, asked = _num(f, "digest_users"), _num(f, "digest_users_requested")
    if users is None:
        return None
    if BY_FIGURE["digest_users"].met(users):
        return True
    # a run asked for fewer (--digest-users) is not comparable; one cut down to fit the budget did not make it
    return None if asked is not None and asked < FULL_DIGEST_USERS else False


def _rss_met(f: dict) -> bool | None:
    rss, users = _num(f, "worker_rss_mb"), _num(f, "worker_state_users")
    if rss is None or users is None or users < FULL_DIGEST_USERS:
        return None  # the target is for a million users' state
    return BY_FIGURE["worker_rss_mb"].met(rss)


def _unread_met(f: dict) -> bool | None:
    p99, rate = _num(f, "unread_p99_ms"), _num(f, "unread_target_requests_per_s")
    if p99 is None or rate is None or rate < TARGET_UNREAD_RATE:
        return None
    return BY_FIGURE["unread_p99_ms"].met(p99)


@dataclass(frozen=True)
class Row:
    """One figure of the table: its key in ``figures``, what it is, its unit, and how its target (the one
    ``bench/targets.py`` has for ``key``, if any) is judged."""

    key: str
    label: str
    unit: str
    met: Callable[[dict], bool | None] | None = None

    @property
    def target(self) -> str | None:
        found = BY_FIGURE.get(self.key)
        return found.shown if found else None


ROWS: tuple[Row, ...] = (
    Row("pipeline_events_per_s", "Herald, full stateful pipeline: steady state (10% → 90% of events decided)",
        "events/s", _target("pipeline_events_per_s")),
    Row("pipeline_overall_events_per_s", "Herald, full pipeline: first to last decision", "events/s"),
    Row("passthrough_events_per_s", "Raw ceiling: confluent-kafka consume → produce of the same bytes", "events/s"),
    Row("quix_events_per_s", "Peer: Herald's job (users without preferences) in Quix Streams", "events/s"),
    Row("pipeline_vs_passthrough_ratio", "Herald / ceiling", "×"),
    Row("pipeline_vs_quix_ratio", "Herald / Quix Streams peer", "×", _target("pipeline_vs_quix_ratio")),
    Row("critical_p50_ms", "CRITICAL produce → delivery topic, p50 (at half Herald's rate)", "ms"),
    Row("critical_p95_ms", "CRITICAL produce → delivery topic, p95", "ms"),
    Row("critical_p99_ms", "CRITICAL produce → delivery topic, p99", "ms", _target("critical_p99_ms")),
    Row("critical_floor_p99_ms", "The floor: the same events produce → read by a bare consumer, p99", "ms"),
    Row("critical_worker_wait_p99_at_most_ms", "... of which in Herald's workers (the lane's reader reading the event → "
        "its requests queued), p99 at most (a histogram bucket's bound)", "ms"),
    Row("critical_machine_busy_pct", "The machine's cores busy during the timed stream", "%"),
    Row("critical_workers_cores", "... of which Herald's workers", "cores"),
    Row("critical_broker_cores", "... the broker", "cores"),
    Row("critical_bench_cores", "... the bench's own stream, tap and bare consumer", "cores"),
    Row("digest_users", "Users with a digest due at the period's end", "users", _digest_users_met),
    Row("digest_s", "Digests: period end → last DIGEST request emitted", "s", _digest_s_met),
    Row("digests_per_s", "Digests emitted per second (users / digest_s)", "digests/s", _target("digests_per_s")),
    Row("digest_machine_busy_pct", "The machine's cores busy while the digests went out", "%"),
    Row("digest_workers_cores", "... of which Herald's workers", "cores"),
    Row("digest_broker_cores", "... the broker", "cores"),
    Row("digest_worker_cpu_us_per_digest", "Herald's workers' CPU for each digest", "µs"),
    Row("unread_p50_ms", "Unread-count API, p50 at a fixed request rate", "ms"),
    Row("unread_p99_ms", "Unread-count API, p99 at a fixed request rate", "ms", _unread_met),
    Row("worker_rss_mb", "Worker memory (RSS, all digest workers) with every digest user's state loaded", "MB",
        _rss_met),
    Row("worker_state_users", "Users of state in those workers", "users"),
    Row("recovery_s", "kill -9 of the worker mid-stream → next decision by a new one", "s", _target("recovery_s")),
)

# the figures every complete run has (a skipped phase's figures are None, with a reason in "skipped")
HEADLINE: tuple[str, ...] = tuple(r.key for r in ROWS)


def fmt(value: Any, unit: str = "") -> str:
    """A figure as the table shows it: thousands separated, precision by size, unit after."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if unit == "×":
        return f"{value:.3g}×" if value < 10 else f"{value:,.1f}×"
    if isinstance(value, int) or abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def verdict(row: Row, figures: dict) -> str:
    if row.met is None:
        return "—"
    met = row.met(figures)
    return "n/a" if met is None else ("yes" if met else "**no**")


def _digest_margin(f: dict) -> str:
    """Whether the digest workers were ready (restored and indexed) before the period ended."""
    margin = f.get("digest_ready_before_end_s")
    probe = (f" (the period fitted to a sample of {fmt(f.get('digest_probe_users'))} states seeded first at "
             f"{fmt(f.get('digest_probe_states_per_s'), 'states/s')})") if f.get("digest_probe_users") else ""
    if margin is None:
        return "before the period ended" + probe
    if margin > 0:
        return f"and were ready {_duration(margin)} before the period ended" + probe
    return f"and were ready only {_duration(-margin)} after the period ended, so digest_s includes that" + probe


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def render_markdown(results: dict, chart_path: str | None = None) -> str:
    """BENCHMARKS.md for ``results`` (the JSON ``herald bench`` writes); ``chart_path`` relative to the file."""
    f = results.get("figures", {})
    skipped = results.get("skipped", {})
    machine = results.get("machine", {})
    options = results.get("options", {})
    git = results.get("git", {})
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `herald bench` from `{results.get('results_file', 'bench/results/latest.json')}`; "
        "do not edit by hand (`python -m bench.report` renders it again).",
        "",
        f"Run {results.get('run_id', '?')}: started {results.get('started_at', '?')}, "
        f"took {_duration(results.get('total_s'))}, commit `{str(git.get('commit', '?'))[:12]}`"
        + (f" with uncommitted changes to {', '.join(f'`{x}`' for x in git.get('changed_files') or []) or 'tracked files'}"
           if git.get("dirty") else "") + ".",
        "",
    ]
    summary = _summary(f)
    if summary:
        lines += [summary, ""]
    lines += ["| Figure | This run | Target (bench/targets.py) | Met |", "|---|---:|---|:---:|"]
    for row in ROWS:
        value = f.get(row.key)
        shown = fmt(value, row.unit) if value is not None else f"not measured: {skipped.get(row.key, 'see notes')}"
        lines.append(f"| {row.label} (`{row.key}`) | {shown} | {row.target or '—'} | {verdict(row, f)} |")
    lines += [
        "",
        "## Ratios",
        "",
        f"- Herald / raw ceiling: **{fmt(f.get('pipeline_vs_passthrough_ratio'), '×')}** "
        f"({fmt(f.get('pipeline_events_per_s'), 'events/s')} against {fmt(f.get('passthrough_events_per_s'), 'events/s')}).",
        f"- Herald / Quix Streams peer: **{fmt(f.get('pipeline_vs_quix_ratio'), '×')}** "
        f"({fmt(f.get('pipeline_events_per_s'), 'events/s')} against {fmt(f.get('quix_events_per_s'), 'events/s')}"
        + (f", Quix Streams {f['quix_version']}" if f.get("quix_version") else "") + ").",
        "",
        "## What was run",
        "",
        f"- Workload: {fmt(f.get('workload_events'))} events over {fmt(f.get('workload_users'))} users "
        f"({fmt(f.get('workload_duplicates'))} duplicates, {fmt(f.get('workload_preferences'))} preferences records), "
        "generated before any clock started and produced once to one topic that the ceiling, the peer and Herald all read.",
    ]
    if f.get("pipeline_events_decided") is not None:
        lines.append(
            f"- Herald decided {fmt(f.get('pipeline_events_decided'))} of them with "
            f"{fmt(f.get('pipeline_workers') or 1)} worker process(es) "
            + {True: "in exactly-once mode ", False: "in at-least-once mode (HERALD_EXACTLY_ONCE=0) "}.get(
                f.get("pipeline_exactly_once"), "")
            + "(one per core; "
            f"{fmt(f.get('pipeline_events_per_s_per_worker'), 'events/s')} a worker), the Quix Streams peer with "
            + (f"{fmt(f.get('quix_processes'))} process(es) in one consumer group" if f.get("quix_processes") else "one")
            + (f"; every one had its final decision {_duration(f.get('pipeline_all_final_s'))} after the first decision"
               if f.get("pipeline_all_final_s") is not None else "")
            + f"; worker start-up {_duration(f.get('pipeline_startup_s'))} (not counted); worker RSS afterwards "
            f"{fmt(f.get('pipeline_worker_rss_mb'), 'MB')} (the largest).")
    by_event = decisions_compared(f)
    if by_event is not None:
        lines.append("- " + by_event)
    elif f.get("pipeline_outcomes_first") and f.get("quix_outcomes"):
        lines.append("- " + outputs_compared(f["pipeline_outcomes_first"], f["quix_outcomes"]))
    if f.get("pipeline_requests") and f.get("quix_requests"):
        lines.append("- " + requests_compared(f["pipeline_requests"], f["quix_requests"],
                                              f.get("pipeline_events_decided") or 0, f.get("quix_events") or 0))
    if f.get("critical_samples") is not None:
        trend = f.get("critical_p50_by_quarter_ms") or []
        load = "fixed by --latency-rate" if f.get("critical_stream_rate_fixed") else "half Herald's measured rate"
        lines.append(
            f"- CRITICAL latency: {fmt(f.get('critical_samples'))} CRITICAL events in a mixed stream at "
            f"{fmt(f.get('critical_stream_events_per_s'), 'events/s')} ({load}), first delivery "
            "record per event on any delivery topic, timed when a consumer of that topic read it"
            + (f", after {fmt(f.get('critical_warmup_s'), 's')} of warm-up not timed" if f.get("critical_warmup_s") else "")
            + (f"; median by quarter of the stream: {', '.join(fmt(x) for x in trend)} ms" if trend else "") + ".")
        if f.get("critical_floor_p99_ms") is not None:
            lines.append(
                f"- The floor under it: a bare consumer in a process of its own (`bench/broker_lag.py`) read the same "
                f"stream's events {fmt(f.get('critical_floor_p50_ms'), 'ms')} (p50) and "
                f"{fmt(f.get('critical_floor_p99_ms'), 'ms')} (p99) after they were produced, while "
                f"{fmt(f.get('critical_machine_busy_pct'), '%')} of the machine's cores were busy: "
                "what no consumer on this machine could go under at that load."
                + (f" Those cores went to Herald's workers ({fmt(f.get('critical_workers_cores'), 'cores')}), the broker "
                   f"({fmt(f.get('critical_broker_cores'), 'cores')}) and the bench's own stream, tap and bare consumer "
                   f"({fmt(f.get('critical_bench_cores'), 'cores')})." if f.get("critical_workers_cores") is not None else ""))
        if f.get("critical_worker_wait_events"):
            bounds = [f.get(f"critical_worker_wait_p{q}_at_most_ms") for q in (50, 99)]
            lines.append(
                f"- Herald's workers' own share, timed by them (`herald_worker_critical_wait_seconds`) for the "
                f"{fmt(f.get('critical_worker_wait_events'))} events the lane decided ahead, from its reader reading "
                "the event to its delivery requests being queued to the broker: p50 "
                + " and p99 ".join("past the last bucket" if b is None else f"at most {fmt(b, 'ms')}" for b in bounds)
                + ". The rest is the broker and the two hops through it (event in, request out).")
    if f.get("digest_users") is not None:
        lines.append(
            f"- Digests: one LOW event for each of {fmt(f.get('digest_users'))} users"
            + (f" (of {fmt(f.get('digest_users_requested'))} asked for)"
               if f.get("digest_users_requested") not in (None, f.get("digest_users")) else "")
            + f" in one fixed period of {fmt(f.get('digest_period_s'), 's')}: the states the policy makes for such "
            f"an event were written to the workers' changelog ({fmt(f.get('digest_seed_states_per_s'), 'states/s')}) "
            f"and {fmt(f.get('digest_workers') or 1)} worker(s) restored them from it in "
            f"{_duration(f.get('digest_restore_s'))} ({fmt(f.get('digest_restore_states_per_s'), 'states/s')}) "
            + _digest_margin(f)
            + (f"; the first digest came {_duration(f.get('digest_first_s'))} after the end" if f.get("digest_first_s") is not None else "")
            + ".")
        if f.get("digest_workers_cores") is not None:
            lines.append(
                f"- While the digests went out, {fmt(f.get('digest_machine_busy_pct'), '%')} of the machine's cores were "
                f"busy: Herald's workers used {fmt(f.get('digest_workers_cores'), 'cores')} "
                f"({fmt(f.get('digest_worker_cpu_us_per_digest'), 'µs')} of CPU a digest), the broker "
                f"{fmt(f.get('digest_broker_cores'), 'cores')} and the bench's reader "
                f"{fmt(f.get('digest_bench_cores'), 'cores')}.")
    if f.get("unread_p99_ms") is not None:
        lines.append(
            f"- Unread-count API: {fmt(f.get('unread_target_requests_per_s'), 'req/s')} asked for, "
            f"{fmt(f.get('unread_requests_per_s'), 'req/s')} answered 200, {fmt(f.get('unread_errors'))} errors.")
    if f.get("recovery_s") is not None:
        lines.append(f"- Recovery: the digest worker(s), holding {fmt(f.get('worker_state_users'))} users of state, were "
                     f"killed (kill -9) with a stream going on; new ones on the same disks were Ready "
                     f"{_duration(f.get('recovery_ready_s'))} after the kill.")
    lines.append("")
    notes = results.get("notes", [])
    errors = results.get("errors", {})
    if notes or errors or skipped:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- Not measured, `{k}`: {v}" for k, v in skipped.items() if k in HEADLINE]
        lines += [f"- The {k} phase failed: {v}" for k, v in errors.items()]
        lines.append("")
    phases = results.get("phase_s", {})
    loads = results.get("phase_load_1min", {})
    if phases:
        lines += ["## Time per phase", "", "| Phase | Seconds | Load average (1 min) at its start |", "|---|---:|---:|"]
        lines += [f"| {name} | {seconds:.1f} | {loads[name]:.2f} |" if name in loads else f"| {name} | {seconds:.1f} | — |"
                  for name, seconds in phases.items()]
        lines += [f"| **total** | **{results.get('total_s', 0):.1f}** | |", ""]
    load_b, load_a = machine.get("load_before"), machine.get("load_after")
    lines += [
        "## Machine",
        "",
        f"- {machine.get('nproc', '?')} cores ({machine.get('cpu_model', '?')}), "
        f"{fmt(machine.get('memory_gb'))} GB of memory, {machine.get('os', '?')}, Python {machine.get('python', '?')}.",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_b) if load_b else '?'}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_a) if load_a else '?'}. The broker, the registry and PostgreSQL "
        f"ran on the same machine ({results.get('stack', {}).get('source', '?')}).",
        "",
    ]
    if chart_path:
        lines += ["## Chart", "", f"![benchmark chart]({chart_path})", ""]
    lines += [
        "## How to reproduce",
        "",
        "```",
        "make up                                  # or nothing: `herald bench` starts what is not running",
        ".venv/bin/pip install -e '.[bench]'      # matplotlib, for the chart (optional)",
        "herald bench                             # the default run (the options below it used)",
        "herald bench --quick                     # a one-minute smoke run",
        "python -m bench.report bench/results/latest.json   # this file again from the JSON",
        "```",
        "",
        f"This run's options: `{options.get('command_line', 'herald bench')}`.",
        "",
    ]
    return "\n".join(lines)


def _summary(f: dict) -> str:
    rate = f.get("pipeline_events_per_s")
    if rate is None:
        return ""
    parts = [f"Herald decided **{fmt(rate, 'events/s')}** at steady state"]
    if f.get("pipeline_vs_passthrough_ratio") is not None:
        parts.append(f"{f['pipeline_vs_passthrough_ratio']:.1%} of the raw ceiling")
    if f.get("pipeline_vs_quix_ratio") is not None:
        parts.append(f"{fmt(f['pipeline_vs_quix_ratio'], '×')} the Quix Streams peer")
    met = [verdict(r, f) for r in ROWS if r.met is not None]
    return ", ".join(parts) + f"; {met.count('yes')} of {len(met)} targets met ({met.count('n/a')} not comparable at this scale)."


def chart(results: dict, path: Path) -> Path | None:
    """A PNG of the headline figures against their targets; None (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    f = results.get("figures", {})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"herald bench {results.get('run_id', '')} — {results.get('machine', {}).get('nproc', '?')} cores, "
                 f"{fmt(f.get('workload_events'))} events", fontsize=12)

    def bars(ax, names: list[str], values: list[Any], title: str, unit: str, target: float | None = None,
             target_label: str = "", log: bool = False) -> None:
        measured = [isinstance(v, (int, float)) and v > 0 for v in values]
        shown = [v if ok else 0 for v, ok in zip(values, measured)]
        colors = ["#4c72b0" if n.startswith("Herald") else "#999999" for n in names]
        drawn = ax.barh(names, shown, color=colors)
        if target is not None:
            ax.axvline(target, color="#c44e52", linestyle="--", label=target_label)
            ax.legend(loc="lower right", fontsize=8)
        positive = [v for v in shown if v > 0] + ([target] if target else [])
        if log and positive:
            ax.set_xscale("log")
            ax.set_xlim(min(positive) / 3, max(positive) * 8)
        else:
            ax.set_xlim(0, (max(positive) if positive else 1) * 1.3)
        left = ax.get_xlim()[0]
        for bar, value, ok in zip(drawn, values, measured):
            ax.text(bar.get_width() if ok else left, bar.get_y() + bar.get_height() / 2,
                    f" {fmt(value)}" if ok else " not measured", va="center", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit)
        ax.invert_yaxis()

    bars(axes[0][0], ["Raw ceiling (passthrough)", "Quix Streams peer", "Herald (steady state)"],
         [f.get("passthrough_events_per_s"), f.get("quix_events_per_s"), f.get("pipeline_events_per_s")],
         "Throughput, same events, same broker", "events/s (log)", TARGET_EVENTS_PER_S,
         "target " + _shown("pipeline_events_per_s"), log=True)
    bars(axes[0][1], ["Herald p50", "Herald p95", "Herald p99"],
         [f.get("critical_p50_ms"), f.get("critical_p95_ms"), f.get("critical_p99_ms")],
         "CRITICAL produce → delivery topic, at half load", "ms", TARGET_CRITICAL_P99_MS,
         "p99 target " + _shown("critical_p99_ms"))
    bars(axes[1][0], ["Herald p50", "Herald p99"], [f.get("unread_p50_ms"), f.get("unread_p99_ms")],
         f"Unread-count API at {fmt(f.get('unread_target_requests_per_s'), 'req/s')}"
         if f.get("unread_target_requests_per_s") else "Unread-count API", "ms",
         TARGET_UNREAD_P99_MS, "p99 target " + _shown("unread_p99_ms"))
    bars(axes[1][1], ["Herald digests/s"], [f.get("digests_per_s")],
         f"Digests for {fmt(f.get('digest_users'))} users: {fmt(f.get('digest_s'), 's')} after the period's end",
         "digests/s", BY_FIGURE["digests_per_s"].value, "target " + _shown("digests_per_s"))
    fig.text(0.01, 0.01, f"workers' RSS {fmt(f.get('worker_rss_mb'), 'MB')} with {fmt(f.get('worker_state_users'))} users of "
             f"state; kill -9 → next decision {fmt(f.get('recovery_s'), 's')}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


KEEP_MARKER = "<!-- other runs: written by hand, kept when herald bench renders the file again -->"


def write(results: dict, markdown: Path, chart_png: Path, say: Callable[[str], None] = lambda line: None) -> dict:
    """Write the chart (when matplotlib is there) and the markdown; return ``{"markdown", "chart"}`` paths (chart None)."""
    made = chart(results, chart_png)
    if made is None:
        say(CHART_HINT + "; BENCHMARKS.md is written without it")
    relative = os.path.relpath(made, markdown.parent) if made else None
    markdown.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # the log of other runs below the marker is the project's record: rendering keeps it
    if markdown.exists() and KEEP_MARKER in markdown.read_text():
        kept = markdown.read_text().split(KEEP_MARKER, 1)[1]
    markdown.write_text(render_markdown(results, relative) + (f"\n{KEEP_MARKER}{kept}" if kept else ""))
    return {"markdown": str(markdown), "chart": str(made) if made else None}


def main(argv: list[str] | None = None) -> int:
    from infra.common import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=REPO_ROOT / "bench" / "results" / "latest.json",
                        help="a results file of herald bench (default bench/results/latest.json)")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="where to write (default BENCHMARKS.md)")
    parser.add_argument("--chart", type=Path, default=None, help="the PNG (default chart.png beside the results file)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    made = write(results, args.markdown, args.chart or args.results.with_name("chart.png"),
                 say=lambda line: print(line, file=sys.stderr))
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
