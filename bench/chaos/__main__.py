"""``python -m bench.chaos``: the fault matrix against the whole local stack; see ``bench/chaos/__init__.py``."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.chaos import report as reports
from bench.chaos.faults import MATRIX, by_name
from bench.chaos.run import Options, finish, run
from herald.paths import REPO_ROOT, home

EPILOG = """\
faults (one at a time, in a random order each round, at random moments):
{faults}

examples:
  python -m bench.chaos --quick                 # one pass, short outages: what `make test` runs (a few minutes)
  python -m bench.chaos --rounds 10 --record    # each fault x10, full outages; results into RELIABILITY.md
  python -m bench.chaos --faults kill-worker,broker-restart --rounds 3

Exit status 0 when every invariant held, 1 when one broke (the report names the records), 2 on a usage error.
The run starts Kafka, the registry and PostgreSQL of its own on free ports (the downloaded jars are shared)
and stops them at the end; it needs root only for the disk-full fault (a tmpfs), which is otherwise skipped.
"""


def parser() -> argparse.ArgumentParser:
    faults = "\n".join(f"  {f.name:18} {f.what}" for f in MATRIX)
    p = argparse.ArgumentParser(prog="python -m bench.chaos", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a steady mixed stream through the whole local stack, inject faults, "
                                            "and check from the records that nothing was lost or sent twice.",
                                epilog=EPILOG.format(faults=faults))
    p.add_argument("--rounds", type=int, default=1, help="passes over the fault matrix (default 1)")
    p.add_argument("--quick", action="store_true", help="short outages (seconds, not a minute): the CI pass")
    p.add_argument("--faults", default=None, metavar="A,B", help="only these faults (default: the whole matrix)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exactly-once", dest="exactly_once", action="store_true", default=True,
                      help="run the stack with HERALD_EXACTLY_ONCE=1, the worker's default (transactions)")
    mode.add_argument("--at-least-once", dest="exactly_once", action="store_false",
                      help="run the stack with HERALD_EXACTLY_ONCE=0: outputs flushed before states, no fencing "
                           "(decisions may be written twice; a woken zombie can overwrite its successor's states)")
    p.add_argument("--rate", type=float, default=30.0, help="inputs per second of the stream (default 30)")
    p.add_argument("--users", type=int, default=60, help="users the stream is about (default 60)")
    p.add_argument("--seed", type=int, default=None, help="the fault order and moments (default: random)")
    p.add_argument("--json", type=Path, default=None, help="where to write the report (default bench/results/chaos-<time>.json)")
    p.add_argument("--record", action="store_true", help="write the results table into RELIABILITY.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.rounds < 1:
        parser().error("--rounds must be at least 1")
    faults = by_name(args.faults)
    opts = Options(rounds=args.rounds, exactly_once=args.exactly_once, rate=args.rate, users=args.users, quick=args.quick, seed=args.seed,
                   warmup_s=15.0 if args.quick else 30.0)
    say = reports.sayer()
    report = finish(run(faults, opts, home(), say))
    out = args.json or REPO_ROOT / "bench" / "results" / f"chaos-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    reports.show(report)
    print(f"report written to {out}", file=sys.stderr)
    if args.record:
        reports.record(report, REPO_ROOT / "RELIABILITY.md")
        print("RELIABILITY.md updated", file=sys.stderr)
    return 0 if report["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
