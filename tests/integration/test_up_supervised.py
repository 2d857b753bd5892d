"""``herald up --detach`` on the real servers: processes killed with -9 come back, ``herald down`` stops it all.

Isolated from everything else on the machine: its own state folder (pid files, logs, the supervisor's
state), topic prefix, application id and API port; the servers are the session's, used as they are
(``--no-servers``: ``herald up`` starts none, even when one does not answer, and ``herald down`` finds
none of its own to stop).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from infra.common import REPO_ROOT, port_open
from tests.conftest import TEST_ENV, free_port

pytestmark = pytest.mark.integration
DEFAULT_PORTS = {9092, 8081, 5432, 8080}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def _free_pair() -> int:
    """A port p with p and p + 1 free (the mail catcher's page listens on the next port), below the kernel's
    range of ephemeral ports, so an outgoing connection cannot take p + 1 meanwhile."""
    import random
    import socket

    while True:
        port = random.randrange(20_000, 32_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


@pytest.fixture
def isolated(stack, unique):
    home = REPO_ROOT / ".herald" / f"test-up-{unique}"
    env = {**os.environ, "HERALD_HOME": str(home), "HERALD_TOPIC_PREFIX": f"{unique}.",
           "HERALD_APP_ID": f"{unique}-pipeline", "HERALD_API_PORT": str(free_port()), "HERALD_DEMO_RATE": "2",
           "HERALD_KAFKA_CONTROLLER_PORT": str(free_port()), "COLUMNS": "250", "PYTHONUNBUFFERED": "1",
           "HERALD_PROMETHEUS_PORT": str(free_port()),
           # the mail catcher and the provider sandbox on ports of this test's own
           "HERALD_SMTP_URL": f"smtp://127.0.0.1:{_free_pair()}", "HERALD_PUSH_URL": f"http://127.0.0.1:{_free_pair()}"}
    env["HERALD_SMS_URL"] = env["HERALD_PUSH_URL"]
    ports = {int(env["HERALD_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]), int(env["HERALD_API_PORT"]),
             int(env["HERALD_SCHEMA_REGISTRY_URL"].split("://")[1].split("/")[0].rsplit(":", 1)[1]),
             int(env["HERALD_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])}
    assert not ports & DEFAULT_PORTS and env["HERALD_HOME"] != TEST_ENV["HERALD_HOME"]
    yield env, home
    _herald(env, "down", timeout=300)  # whatever the test left, even after a failure
    for pid_file in (home / "run").glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(home, ignore_errors=True)


def _herald(env: dict, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _state(home) -> dict:
    return json.loads((home / "run" / "supervisor.json").read_text())


def _wait(what, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.5)


def test_killed_processes_come_back_and_down_stops_everything_without_restarts(isolated):
    """With --monitoring: Prometheus too, which `herald status` lists and `herald down` stops."""
    env, home = isolated
    result = _herald(env, "up", "--detach", "--no-servers", "--monitoring")
    assert result.returncode == 0, result.stdout + result.stderr
    supervisor = int((home / "run" / "supervisor.pid").read_text())
    first = _state(home)
    assert first["pid"] == supervisor and first["mode"] == "detached"
    assert {n: p["state"] for n, p in first["processes"].items()} == dict.fromkeys(
        ("worker", "sink-inapp", "api", "mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms", "demo"), "up")
    old = {name: first["processes"][name]["pid"] for name in ("worker", "api")}
    for pid in old.values():
        os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        procs = _state(home)["processes"]
        return all(procs[n]["state"] == "up" and procs[n]["pid"] != old[n] for n in old)
    _wait(back, 300, f"not restarted: {(home / 'logs' / 'supervisor.log').read_text()}")
    state = _state(home)
    for name, pid in old.items():
        info = state["processes"][name]
        assert info["restarts"] == 1 and info["last_exit"]["signal"] == "SIGKILL", info
        assert not _alive(pid) and _alive(info["pid"])
    assert state["processes"]["sink-inapp"]["restarts"] == 0 and state["processes"]["demo"]["restarts"] == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{env['HERALD_API_PORT']}/readyz", timeout=5) as answer:
        assert answer.status == 200  # the restarted API serves on its port
    log = (home / "logs" / "supervisor.log").read_text()
    assert "worker" in log and "SIGKILL" in log and "restarted" in log

    status = _herald(env, "status", timeout=120)
    lines = (status.stdout + status.stderr).splitlines()
    for name in ("worker", "api"):
        line = next(row for row in lines if row.strip("│ ").startswith(name))
        assert "up" in line and "restarts=1" in line and "SIGKILL" in line, "\n".join(lines)
    assert any(row.strip("│ ").startswith("supervisor") and "up" in row for row in lines), "\n".join(lines)
    _status_shows_every_part(env, home)

    pids = [supervisor, *(p["pid"] for p in state["processes"].values())]
    result = _herald(env, "down", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(_alive(pid) for pid in pids)
    final = _state(home)
    assert final["state"] == "stopped"
    assert {n: (p["state"], p["restarts"]) for n, p in final["processes"].items()} == {
        "worker": ("stopped", 1), "api": ("stopped", 1), "sink-inapp": ("stopped", 0), "demo": ("stopped", 0),
        **dict.fromkeys(("mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms"), ("stopped", 0))}
    assert not list((home / "run").glob("*.pid"))
    assert not port_open("127.0.0.1", int(env["HERALD_PROMETHEUS_PORT"]))  # down stopped Prometheus too
    bootstrap = env["HERALD_KAFKA_BOOTSTRAP"].rsplit(":", 1)
    assert port_open(bootstrap[0], int(bootstrap[1]))  # the shared servers were used, never stopped


def _row(lines: list[str], name: str) -> str:
    return next(row for row in lines if row.strip("│ ").startswith(name + " "))


def _status_shows_every_part(env: dict, home) -> None:
    """`herald status` on the running stack: each part up with Herald's version and its metrics address,
    Prometheus and what it scrapes, each sink's circuit breaker, and the consumer groups' lag."""
    from importlib.metadata import version

    app = env["HERALD_APP_ID"]
    prometheus_port = int(env["HERALD_PROMETHEUS_PORT"])

    def scraped() -> bool:  # Prometheus has every process's target up (ports picked at start, from targets.json)
        url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?query=up"
        with urllib.request.urlopen(url, timeout=5) as r:
            up = {(t["metric"].get("process"), t["value"][1]) for t in json.loads(r.read())["data"]["result"]}
        return {(p, "1") for p in ("worker", "api", "sink-inapp", "sink-email", "sink-push", "sink-sms")} <= up
    _wait(scraped, 120, "Prometheus does not scrape every process")

    def lag_listed() -> bool:  # the email sink's group shows once it has committed its first offsets
        done = _herald(env, "status", timeout=120)
        text = done.stdout + done.stderr
        return "consumer lag" in text and f"{app}-sink-email" in text[text.index("consumer lag"):]
    _wait(lag_listed, 120, "no consumer lag table with the email sink's group")
    status = _herald(env, "status", timeout=120)
    lines = (status.stdout + status.stderr).splitlines()
    shown = "\n".join(lines)
    for name in ("worker", "api", "sink-inapp", "sink-email", "sink-push", "sink-sms"):
        row = _row(lines, name)
        assert " up " in row and "http://127.0.0.1:" in row and "/metrics" in row, shown
        assert version("herald") in row, shown
    row = _row(lines, "prometheus")
    assert " up " in row and f"127.0.0.1:{prometheus_port}" in row and "targets=" in row, shown
    breakers = shown[shown.index("circuit breakers"):]
    for channel in ("email", "push", "sms"):
        assert any(r.strip("│ ").startswith(channel) and any(s in r for s in ("CLOSED", "OPEN", "HALF_OPEN"))
                   for r in breakers.splitlines()), shown
    lag = shown[shown.index("consumer lag"):]
    assert f"{app}-sink-email" in lag and env["HERALD_TOPIC_PREFIX"] + "delivery.email" in lag, shown
    assert all(r.split("│")[-2].strip().isdigit() for r in lag.splitlines() if app in r), shown
    with urllib.request.urlopen(f"http://127.0.0.1:{env['HERALD_API_PORT']}/status/queries", timeout=10) as r:
        assert json.loads(r.read())["available"] is True


def test_foreground_up_supervises_in_its_process_and_down_from_elsewhere_stops_it(isolated):
    """``herald up`` with its live view: the supervisor is that process; ``herald down`` in another terminal
    makes it stop everything, as Ctrl-C would."""
    env, home = isolated
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with open(home / "logs" / "up.out", "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--no-demo", "--no-servers"], cwd=REPO_ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            assert up.poll() is None, (home / "logs" / "up.out").read_text()
            try:
                state = _state(home)
            except (OSError, ValueError):
                return False
            return state["pid"] == up.pid and all(p["state"] == "up" for p in state["processes"].values())
        _wait(ready, 300, "herald up never had every process up")
        state = _state(home)
        assert state["mode"] == "foreground" and set(state["processes"]) == {
            "worker", "sink-inapp", "api", "mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms"}
        assert not (home / "run" / "supervisor.pid").exists()  # no detached supervisor
        old = state["processes"]["sink-inapp"]["pid"]
        os.kill(old, signal.SIGKILL)

        def back() -> bool:
            sink = _state(home)["processes"]["sink-inapp"]
            return sink["state"] == "up" and sink["pid"] != old
        _wait(back, 120, f"sink not restarted: {(home / 'logs' / 'supervisor.log').read_text()}")
        pids = [up.pid, *(p["pid"] for p in _state(home)["processes"].values())]

        result = _herald(env, "down", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert up.poll() is not None  # down waited for `herald up` to finish stopping
        assert not any(_alive(pid) for pid in pids)
        final = _state(home)
        assert {n: (p["state"], p["restarts"]) for n, p in final["processes"].items()} == {
            "worker": ("stopped", 0), "sink-inapp": ("stopped", 1), "api": ("stopped", 0),
            **dict.fromkeys(("mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms"), ("stopped", 0))}
    finally:
        if up.poll() is None:
            up.kill()
        up.wait(30)
