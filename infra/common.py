"""What every local server shares: where state lives, how readiness is awaited, how failure is said.

Every server keeps its files under one git-ignored folder (``HERALD_HOME``, default
``<repo>/.herald``): ``cache/`` for downloads that survive ``herald down``, ``<service>/`` for data,
``logs/<service>.log`` for output and ``run/<service>.pid`` for the process id.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from herald.paths import REPO_ROOT, home, subdir  # noqa: F401 - the state folder is shared with the API


class InfraError(RuntimeError):
    """A server could not be fetched or started. The message is one line: what failed and what to do."""


def log_path(service: str) -> Path:
    return subdir("logs") / f"{service}.log"


def pid_path(service: str) -> Path:
    return subdir("run") / f"{service}.pid"


@dataclass
class ServiceStatus:
    """What ``herald status`` shows for one server."""

    name: str
    up: bool
    address: str
    version: str = ""
    detail: dict = field(default_factory=dict)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_port_free(service: str, host: str, port: int, env_var: str) -> None:
    """Refuse to start a server on a port someone else already holds."""
    if port_open(host, port):
        raise InfraError(
            f"{service}: port {host}:{port} is already taken by another process; "
            f"stop it (e.g. `ss -ltnp 'sport = :{port}'` shows which) or point {env_var} at a free address"
        )


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None,
               proc: subprocess.Popen | None = None, interval: float = 0.25, busy_up_to: float | None = None) -> None:
    """Poll ``check`` until it is true; fail with the log's tail when time runs out or the process dies.

    ``busy_up_to``: a server still writing its ``log`` is working, not stuck (a broker loading thousands of
    partitions' logs after a restart). The wait then goes on while the log has grown within the last
    ``timeout`` seconds, up to ``busy_up_to`` seconds in all; giving up on such a server and stopping it
    would only make it start its recovery again next time."""
    started = time.monotonic()
    deadline = started + timeout
    size = _size(log)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"{what}: the process exited with code {proc.returncode} before it was ready; "
                             f"see {log}{_tail(log)}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        time.sleep(interval)
        if busy_up_to is not None and (grown := _size(log)) != size:
            size = grown
            deadline = min(started + busy_up_to, time.monotonic() + timeout)
    waited = time.monotonic() - started
    if busy_up_to is None:
        why = f"not ready after {waited:.0f}s"
    elif waited >= busy_up_to:
        why = f"its log still growing after {busy_up_to:.0f}s"
    else:
        why = f"not ready after {waited:.0f}s, {timeout:.0f}s of them with nothing new in its log"
    raise InfraError(f"{what}: {why}; see {log}{_tail(log)}")


def _size(log: Path | None) -> int:
    try:
        return log.stat().st_size if log is not None else 0
    except OSError:
        return 0


def _tail(log: Path | None, lines: int = 5) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return ("\n  last lines:\n    " + "\n    ".join(text)) if text else ""


def start_process(service: str, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a server detached from our process group, output to its log, pid recorded."""
    log = log_path(service)
    out = open(log, "ab")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    pid_path(service).write_text(str(proc.pid))
    return proc


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Stop a child started in a session of its own, with whatever it started: SIGTERM its process group,
    SIGKILL the group after ``timeout`` seconds. Its exit status (None: it was gone already and not ours)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)
    except ProcessLookupError:
        return proc.poll()


def read_pid(service: str) -> int | None:
    path = pid_path(service)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (ValueError, ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None


def stop_process(service: str, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL after ``timeout``. True if something was stopped."""
    pid = read_pid(service)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # reap if it is our child
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_path(service).unlink(missing_ok=True)
    return True


def maven_fetch(service: str, pom: Path, dest: Path, progress: Callable[[str], None] = print) -> None:
    """Copy a pom's dependencies into ``dest`` with Maven, once. The marker file makes reruns free."""
    marker = dest / ".complete"
    if marker.exists() and marker.read_text() == pom.read_text():
        return
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"{service}: fetching jars from Maven Central into {dest} (first run only)…")
    argv = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={dest}", "-DincludeScope=runtime"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfraError(f"{service}: Maven could not fetch the jars (exit {result.returncode}); "
                         f"check that Maven Central is reachable and `mvn` is installed. "
                         f"{(result.stdout + result.stderr).strip()[-600:]}")
    marker.write_text(pom.read_text())
