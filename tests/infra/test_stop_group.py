"""``stop_group``: a child started in a session of its own is stopped with whatever it started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from infra.common import stop_group

CHILD_AND_GRANDCHILD = ("import subprocess, sys, time; "
                        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                        "print(p.pid, flush=True); time.sleep(60)")
IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of the child's own is gone too, for what matters here
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_the_group_is_terminated_grandchildren_included():
    proc = subprocess.Popen([sys.executable, "-c", CHILD_AND_GRANDCHILD], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    grandchild = int(proc.stdout.readline())
    assert stop_group(proc, 10) == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    assert stop_group(proc, 10) == -signal.SIGTERM  # stopping it again only reports how it ended


def test_one_that_ignores_sigterm_is_killed_after_the_timeout():
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert stop_group(proc, 0.5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5
