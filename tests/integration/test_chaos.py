"""The fault matrix's short pass (issue #15): one of each fault, with short outages, through the whole local
stack on servers of the run's own, in the default mode (exactly-once); every invariant must hold and every fault
be recovered from.

It runs ``python -m bench.chaos --quick`` as a subprocess (the run points its own environment at its own
servers) and reads the JSON report; a failure shows the violations and the slow recoveries."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.common import REPO_ROOT

pytestmark = pytest.mark.integration


def test_one_pass_over_the_fault_matrix_loses_nothing_and_sends_nothing_twice(stack, tmp_path):
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--quick", "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert out.exists(), f"no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["exactly_once"] is True  # the worker's default mode is the one checked
    ran = {f["name"] for f in report["faults"] if "skipped" not in f}
    assert ran >= {"kill-worker", "kill-sink-inapp", "kill-sink-email", "kill-sink-push", "kill-sink-sms", "kill-api",
                   "zombie-worker", "broker-restart", "postgres-restart", "registry-restart", "provider-outage",
                   "second-worker"}, report["faults"]
    # every promise is checked: one final decision per input, one dead letter per bad record,
    # no delivery twice, every request ended, inbox counts equal to rows. How fast each fault recovered is a
    # figure (RELIABILITY.md, the bench run), not an assertion here; that it recovered at all is.
    broken = [v for v in report["violations"] if v["invariant"] != "recovery"]
    assert broken == [], json.dumps(broken, indent=1)
    assert all(f["recovery_s"] is not None for f in report["faults"] if "skipped" not in f), report["faults"]
    # the run did real work: events decided, every channel delivered, the inbox read through the API
    assert report["outputs"]["final_decisions"] > 1000 and report["outputs"]["dead_letters"] > 0
    assert all(report["outputs"]["provider_messages"][c] > 0 for c in ("EMAIL", "PUSH", "SMS"))
    assert report["outputs"]["inbox_rows"] > 0 and report["outputs"]["api_calls_ok"] > 0
    assert done.returncode == 0, done.stderr[-4000:]
