"""`herald api` with several worker processes: one port, metrics summed over the workers, one SIGTERM stops all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from api import auth
from infra import postgres
from infra.common import REPO_ROOT
from tests.conftest import free_port

pytestmark = pytest.mark.integration

SECRET = "workers-secret-" + "y" * 40


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as r:  # a new connection each time: any worker answers
        return r.status, r.read()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_two_workers_share_the_port_and_their_metrics(stack, unique, tmp_path):
    postgres.migrate()
    port = free_port()
    log = tmp_path / "api.log"
    env = {**os.environ, "HERALD_API_PORT": str(port), "HERALD_JWT_SECRET": SECRET, "HERALD_API_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        workers = children(proc.pid)
        user = f"{unique}-u"
        token = auth.mint(SECRET, user)
        for _ in range(20):
            assert get(port, f"/v1/users/{user}/unread-count", token) == (200, b'{"user_id":"%s","unread":0,"unseen":0}' % user.encode())
        time.sleep(1)  # the other worker may not have answered /readyz yet
        metrics = get(port, "/metrics")[1].decode()
        line = next(row for row in metrics.splitlines()
                    if row.startswith('herald_api_requests_total{route="/v1/users/{user_id}/unread-count",status="200"}'))
        assert float(line.split()[-1]) == 20.0, metrics
        second = subprocess.run([sys.executable, "-m", "streams.cli", "api"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "cannot listen" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
