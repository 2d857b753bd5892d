"""A chaos run's report in the terminal, and its table in RELIABILITY.md."""
from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from bench.chaos.invariants import RECOVERY_LIMIT_S

MARKER = "<!-- chaos:latest -->"


def sayer() -> Callable[[str], None]:
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"{time.monotonic() - started:7.1f} s {line}", file=sys.stderr, flush=True)
    return say


def by_fault(report: dict) -> list[dict]:
    """One row per fault: how often, recovery times (worst, median), skipped."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for entry in report.get("faults", []):
        runs[entry["name"]].append(entry)
    rows = []
    for name, entries in runs.items():
        times = sorted(e["recovery_s"] for e in entries if e.get("recovery_s") is not None)
        done = [e for e in entries if "skipped" not in e]
        rows.append({"fault": name, "times": len(done), "skipped": len(entries) - len(done),
                     "never_recovered": sum(1 for e in done if e.get("recovery_s") is None),
                     "median_s": round(statistics.median(times), 2) if times else None, "worst_s": times[-1] if times else None,
                     "skip_reason": next((e["skipped"] for e in entries if "skipped" in e), None)})
    return rows


def show(report: dict) -> None:
    console = Console(stderr=True)
    table = Table(title=f"chaos run {report['run_id']}: {report['rounds']} round(s), {report['seconds']:.0f} s")
    for column in ("fault", "times", "median recovery", "worst recovery", f"≤ {RECOVERY_LIMIT_S:.0f} s"):
        table.add_column(column)
    for row in by_fault(report):
        if row["times"] == 0:
            table.add_row(row["fault"], "skipped", "", "", row["skip_reason"] or "")
            continue
        ok = row["never_recovered"] == 0 and (row["worst_s"] or 0) <= RECOVERY_LIMIT_S
        table.add_row(row["fault"], str(row["times"]), f"{row['median_s']} s", f"{row['worst_s']} s", "yes" if ok else "NO")
    console.print(table)
    for key in ("inputs", "outputs", "repeats", "restarts"):
        if key in report:
            console.print(f"{key}: {report[key]}")
    if report["violations"]:
        console.print(f"[bold red]{len(report['violations'])} invariant violation(s):[/]")
        for v in report["violations"]:
            console.print(f"  {v['invariant']}: {v['message']} {v['records'][:5]}")
    else:
        console.print("[bold green]every invariant held[/]")


def markdown(report: dict) -> str:
    lines = [MARKER, "",
             f"Run `{report['run_id']}` started {report['started_at']}: {report['rounds']} round(s) of the matrix"
             f"{' (quick outages)' if report['quick'] else ''}"
             f"{', HERALD_EXACTLY_ONCE=1' if report.get('exactly_once') else ', HERALD_EXACTLY_ONCE=0 (at least once)'}"
             f", a stream of {report['rate']:g} inputs/s, "
             f"{report['seconds'] / 60:.1f} min{_commit(report)}. "
             f"Invariants: **{'all held' if report['held'] else 'BROKEN'}**.", "",
             "| fault | times | median recovery | worst recovery | ≤ 30 s |", "|---|---|---|---|---|"]
    for row in by_fault(report):
        if row["times"] == 0:
            lines.append(f"| {row['fault']} | skipped: {row['skip_reason']} | | | |")
            continue
        ok = row["never_recovered"] == 0 and (row["worst_s"] or 0) <= RECOVERY_LIMIT_S
        lines.append(f"| {row['fault']} | {row['times']} | {row['median_s']} s | {row['worst_s']} s | {'yes' if ok else 'no'} |")
    i, o = report.get("inputs", {}), report.get("outputs", {})
    lines += ["", f"Inputs accepted: {i.get('events_accepted', 0):,} event records and {i.get('bad_accepted', 0):,} bad "
              f"records. Outputs: {o.get('final_decisions', 0):,} final decisions, {o.get('dead_letters', 0):,} dead "
              f"letters, {o.get('still_held', 0)} events still waiting, {o.get('delivery_requests', 0):,} delivery "
              f"requests ending {o.get('final_statuses', {})}; the providers got {o.get('provider_messages', {})}; "
              f"{o.get('inbox_rows', 0):,} inbox rows. Violations: {len(report['violations'])}.", ""]
    for v in report["violations"]:
        lines.append(f"- {v['invariant']}: {v['message']}: {', '.join(v['records'][:5])}")
    return "\n".join(lines) + "\n"


def _commit(report: dict) -> str:
    git = report.get("git") or {}
    if not git.get("commit"):
        return ""
    return f", code at `{git['commit'][:7]}`" + (" with local changes" if git.get("dirty") else "")


def record(report: dict, path: Path) -> None:
    """Replace the latest run's section of ``path`` (everything from the marker on) with this run's."""
    text = path.read_text() if path.exists() else ""
    head = text.split(MARKER, 1)[0] if MARKER in text else text
    path.write_text(head.rstrip() + "\n\n" + markdown(report))
