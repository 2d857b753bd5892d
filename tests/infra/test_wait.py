"""Waiting for a local server: a server still writing its log is working, not stuck (``infra.common.wait_until``).

A broker restarted on a data directory with thousands of partitions spends minutes loading their logs; giving
up after the fixed timeout and stopping it made every later start begin that recovery again, so it never came
up. Each test runs a real process that writes its log as such a server would.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from infra.common import InfraError, wait_until

# writes a line every 0.1 s for ``busy`` seconds, then (if ``ready``) creates the file that says it is ready
SERVER = """
import sys, time, pathlib
log, flag, busy, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
end = time.monotonic() + busy
with log.open("a") as out:
    while time.monotonic() < end:
        out.write("loading a partition's log\\n"); out.flush(); time.sleep(0.1)
if ready:
    flag.touch()
time.sleep(60)
"""


@pytest.fixture
def server(tmp_path):
    procs = []

    def start(busy: float, ready: bool = True):
        log, flag = tmp_path / "server.log", tmp_path / "ready"
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(log), str(flag), str(busy), "1" if ready else "0"])
        procs.append(proc)
        return proc, log, flag.exists

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_server_writing_its_log_is_waited_for_past_the_timeout(server):
    proc, log, ready = server(busy=2.5)
    started = time.monotonic()
    wait_until(ready, 1.0, "server", log, proc, interval=0.05, busy_up_to=20)
    assert time.monotonic() - started > 2.0, "it became ready only once it stopped loading"


def test_without_busy_up_to_the_timeout_holds(server):
    proc, log, ready = server(busy=2.5)
    with pytest.raises(InfraError, match="not ready after 1s"):
        wait_until(ready, 1.0, "server", log, proc, interval=0.05)


def test_a_server_whose_log_stopped_growing_is_given_up_after_the_timeout(server):
    proc, log, ready = server(busy=0.5, ready=False)
    started = time.monotonic()
    with pytest.raises(InfraError, match="nothing new in its log") as failure:
        wait_until(ready, 1.0, "server", log, proc, interval=0.05, busy_up_to=20)
    assert time.monotonic() - started < 5, "a silent server is not waited for up to busy_up_to"
    assert "loading a partition's log" in str(failure.value), "the log's tail is in the error"


def test_a_server_busy_for_ever_is_given_up_at_busy_up_to(server):
    proc, log, ready = server(busy=60)
    started = time.monotonic()
    with pytest.raises(InfraError, match="still growing after 2s"):
        wait_until(ready, 1.0, "server", log, proc, interval=0.05, busy_up_to=2)
    assert time.monotonic() - started < 4
