"""Keeps ``herald up``'s processes running: a process that exits or is killed is started again, with backoff.

The processes come from one table of :class:`Proc` entries (``streams.stack.PROCESSES``): a name, the
command line, a readiness check and when it starts. The supervisor knows nothing else about them.

Rules:

- Every process runs in its own session (so Ctrl-C in the terminal reaches only ``herald up``), writes
  ``logs/<name>.log`` (appended across restarts) and ``run/<name>.pid``.
- A process is ``starting`` until its readiness check passes, then ``up``. An entry with ``after_ready``
  (the demo producer) is started only once every entry above it is up.
- A process that exits, for any reason and with any code, is ``restarting``: what is left of its process
  group is killed (an API's worker processes must not keep its port) and it is started again after a
  delay of 1 s, doubling with each exit in a row up to 30 s. Exits in a row are start-ups that fail: a
  process that was up (its readiness check passed) for 3 s, or ran for 60 s, before it exited starts the
  count afresh (the next delay is 1 s again), much as supervisord's ``startsecs``; so a worker killed twice
  in a minute is back in seconds, while one that cannot start waits longer each time.
- Each exit is recorded (time, exit code or signal, how long it ran, the restart count) in
  ``run/supervisor.json``, which ``herald status`` and the live view read, and logged to
  ``logs/supervisor.log``.
- A process of this table already running when the supervisor starts (its pid file names a live process:
  a supervisor was killed, and a new ``herald up`` runs) is adopted, not started twice; its exit code is
  then unknown (it is not our child), its exit is still noticed and it is restarted like the others.
- Stopping (SIGTERM or SIGINT to a detached supervisor, Ctrl-C in ``herald up``) ends supervision first,
  so nothing is restarted any more, then stops the processes in reverse table order.

Where it runs:

- ``herald up`` (foreground): in the ``herald up`` process, in a thread beside the live view; Ctrl-C stops
  the supervisor, then the processes, then the servers.
- ``herald up --detach``: ``herald up`` starts ``python -m streams.supervisor`` as a process of its own
  (``run/supervisor.pid``, ``logs/supervisor.log``), waits until the state file says every process is up,
  and returns; the supervisor keeps going. ``herald down`` stops the supervisor first (which stops the
  processes), then stops any process still recorded (a supervisor killed with -9 left them), then the
  servers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from herald.paths import REPO_ROOT, subdir
from herald.settings import Settings

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
RESET_AFTER_S = 60.0
UP_RESET_AFTER_S = 3.0
HISTORY = 50  # exits kept in the state file
NAME = "supervisor"


@dataclass(frozen=True)
class Probe:
    """What a readiness check may look at: the settings, the process's log and where this run's output begins."""

    settings: Settings
    log: Path
    since: int


Check = Callable[[Probe], bool]


def log_line(marker: str) -> Check:
    """Ready once this run of the process has written ``marker`` to its log."""
    def check(probe: Probe) -> bool:
        with open(probe.log, "rb") as handle:
            handle.seek(probe.since)
            return marker.encode() in handle.read()
    return check


def http_ok(url: str) -> Check:
    """Ready once ``url`` (``{setting}`` fields filled from the settings) answers 200."""
    def check(probe: Probe) -> bool:
        with urllib.request.urlopen(fill(url, probe.settings), timeout=1) as response:
            return response.status == 200
    return check


def tcp_port(port: str | int, host: str = "127.0.0.1") -> Check:
    """Ready once something accepts connections on ``port`` (an int, or ``{setting}`` fields)."""
    import socket

    def check(probe: Probe) -> bool:
        with socket.create_connection((host, int(fill(str(port), probe.settings))), timeout=0.5):
            return True
    return check


def running() -> Check:
    """Ready as soon as it runs (a process with nothing to wait for, like the demo producer)."""
    return lambda probe: True


@dataclass(frozen=True)
class Proc:
    """One supervised process.

    ``argv``: a ``herald`` subcommand and its arguments (``("sink", "inapp")``), or, when it starts with a
    dash, arguments of the Python interpreter (``("-m", "some.module")``). ``{setting}`` fields are filled
    from the settings (``"{demo_rate:g}"``). ``demo_only``: started only with the demo. ``after_ready``:
    started once every entry above it is up. ``only_if``: started only when it says yes for the settings
    (a local stand-in only when the provider's URL points at it)."""

    name: str
    argv: tuple[str, ...]
    ready: Check
    demo_only: bool = False
    after_ready: bool = False
    only_if: Callable[[Settings], bool] | None = None

    def wanted(self, settings: Settings, demo: bool) -> bool:
        return (demo or not self.demo_only) and (self.only_if is None or self.only_if(settings))

    def command(self, settings: Settings) -> list[str]:
        args = [fill(a, settings) for a in self.argv]
        return [sys.executable, *args] if args[0].startswith("-") else [sys.executable, "-m", "streams.cli", *args]


def fill(text: str, settings: Settings) -> str:
    """``text`` with ``{setting}`` fields filled from the settings, ``{hostname}``, and ``{smtp_port}`` /
    ``{provider_port}`` (the ports of HERALD_SMTP_URL and of the push, else SMS, provider URL: where their local
    stand-ins listen)."""
    if "{" not in text:
        return text
    from urllib.parse import urlsplit

    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    values["smtp_port"] = urlsplit(settings.smtp_url).port or 25
    values["mail_page_port"] = values["smtp_port"] + 1  # the mail catcher's page of what it caught
    values["hostname"] = socket.gethostname()
    values["provider_port"] = urlsplit(settings.push_url).port or urlsplit(settings.sms_url).port or 80
    return text.format_map(values)


def backoff_delay(exits_in_a_row: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait before the restart that follows the ``exits_in_a_row``-th exit in a row (1, 2, 4, ... cap)."""
    if exits_in_a_row < 1:
        return 0.0
    return min(cap, base * 2 ** min(exits_in_a_row - 1, 32))


@dataclass
class Backoff:
    """Counts exits in a row; an exit after the process was up for ``up_reset_after`` seconds, or ran for
    ``reset_after`` seconds, starts the count afresh."""

    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    reset_after: float = RESET_AFTER_S
    up_reset_after: float = UP_RESET_AFTER_S
    in_a_row: int = 0

    def on_exit(self, ran_s: float, up_s: float = 0.0) -> float:
        """The delay before the next start, given how long the process ran before this exit, and how long of
        that it was up (ready)."""
        if up_s >= self.up_reset_after or ran_s >= self.reset_after:
            self.in_a_row = 0
        self.in_a_row += 1
        return backoff_delay(self.in_a_row, self.base, self.cap)


def state_path() -> Path:
    return subdir("run") / f"{NAME}.json"


def read_state() -> dict:
    """The last state a supervisor wrote ({} when none); ``alive`` says whether that supervisor still runs."""
    try:
        state = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}
    state["alive"] = state.get("state") == "running" and alive(state.get("pid"))
    return state


def alive(pid: int | None) -> bool:
    """True if ``pid`` names a process that has not exited (a zombie has)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(last: dict | None) -> str:
    """``SIGKILL at 18:02:11 after 12s``, ``code 1 at ...``, or ``""``; for the live view and ``herald status``."""
    if not last:
        return ""
    how = last.get("signal") or (f"code {last['code']}" if last.get("code") is not None else "exited (code unknown)")
    return f"{how} at {time.strftime('%H:%M:%S', time.localtime(last['at']))} after {last['ran_s']:.0f}s"


STYLE = {"up": "green", "starting": "yellow", "restarting": "yellow", "waiting": "dim", "stopped": "red",
         "down": "red"}


def rows(snapshot: dict, names: list[str]) -> list[tuple[str, str, str]]:
    """(name, state in rich markup, detail) per process: pid, restarts, last exit; for the view and ``status``."""
    out = []
    procs = snapshot.get("processes", {})
    for name in names:
        info = procs.get(name) or {"state": "down"}
        state = info["state"]
        label = f"[{STYLE.get(state, 'red')}]{state}[/]"
        if state == "restarting" and info.get("restart_at") is not None:
            label = f"[yellow]restarting in {max(0.0, info['restart_at'] - time.time()):.0f}s[/]"
        detail = [f"pid={info['pid']}"] if info.get("pid") and state in ("up", "starting") else []
        if name in procs:
            detail.append(f"restarts={info.get('restarts', 0)}")
        if info.get("last_exit"):
            detail.append(f"last exit: {describe_exit(info['last_exit'])}")
        out.append((name, label, ", ".join(detail)))
    return out


@dataclass
class Child:
    proc: Proc
    state: str = "waiting"  # waiting, starting, up, restarting, stopped
    popen: subprocess.Popen | None = None
    pid: int | None = None
    started: float = 0.0  # monotonic
    since: float = 0.0  # wall clock of the last state change
    restarts: int = 0
    ever_ready: bool = False
    log_since: int = 0
    restart_at: float = 0.0  # monotonic
    last_exit: dict | None = None
    backoff: Backoff = field(default_factory=Backoff)


class Supervisor:
    """Starts the table's processes and keeps them running; see the module docstring for the rules.

    ``step()`` does one pass (start what is due, notice readiness and exits); ``run()`` steps until told
    to stop; ``stop()`` stops the processes. Not thread-safe: one thread steps and stops it."""

    def __init__(self, procs: list[Proc], settings: Settings, *, demo: bool = True, env: dict | None = None,
                 mode: str = "foreground", backoff: Callable[[], Backoff] = Backoff,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.env = dict(env or {})
        self.mode = mode
        self.clock = clock
        self.children = [Child(p, backoff=backoff()) for p in procs if p.wanted(settings, demo)]
        self.history: list[dict] = []
        self.state = "running"
        self.log = _Log(settings.log_format)
        self._adopt()
        self._write()

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval: float = 0.25) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a failed pass (say, the state file not written) must not end supervision
                self.log.warning("a supervision pass failed:\n%s", traceback.format_exc())
            stop.wait(interval)

    def step(self) -> None:
        now = self.clock()
        changed = False
        all_up_so_far = True
        for child in self.children:
            if child.state == "waiting" and (all_up_so_far or not child.proc.after_ready):
                self._start(child, first=True)
                changed = True
            elif child.state in ("starting", "up") and self._exited(child):
                self._on_exit(child, now)
                changed = True
            elif child.state == "restarting" and now >= child.restart_at:
                child.restarts += 1
                self._start(child, first=False)
                changed = True
            if child.state == "starting" and self._ready(child):
                child.state, child.since, child.ever_ready = "up", time.time(), True
                self.log.info("%s is up (pid %s)", child.proc.name, child.pid)
                changed = True
            all_up_so_far &= child.state == "up"
        if changed:
            self._write()

    def stop(self, timeout: float = 20, say: Callable[[str], None] | None = None) -> None:
        """End supervision (nothing restarts after this), then stop the processes in reverse table order;
        ``say`` hears "stopped <name>" for each one that was running."""
        from infra.common import stop_process

        self.state = "stopping"
        self._write()
        for child in reversed(self.children):
            if child.state in ("starting", "up") or child.pid:
                if stop_process(child.proc.name, timeout=timeout) and say:
                    say(f"stopped {child.proc.name}")
                if child.popen is not None:
                    try:
                        child.popen.wait(1)
                    except (subprocess.TimeoutExpired, ChildProcessError):
                        pass
            child.state, child.since, child.pid, child.popen = "stopped", time.time(), None, None
        self.state = "stopped"
        self.log.info("stopped every process")
        self._write()

    # -- one process ---------------------------------------------------------------------------------

    def _adopt(self) -> None:
        from infra.common import log_path, read_pid

        before = read_state().get("processes", {})  # the previous supervisor's counts go on
        for child in self.children:
            pid = read_pid(child.proc.name)
            if pid is not None and alive(pid):
                child.pid, child.state, child.started, child.since = pid, "starting", self.clock(), time.time()
                child.log_since = 0
                child.restarts = before.get(child.proc.name, {}).get("restarts", 0)
                child.last_exit = before.get(child.proc.name, {}).get("last_exit")
                self.log.info("%s already runs (pid %s): adopted", child.proc.name, pid)
                log_path(child.proc.name).touch()

    def _start(self, child: Child, first: bool) -> None:
        from infra.common import log_path, start_process

        name = child.proc.name
        log = log_path(name)
        if first:
            log.write_text("")
        else:
            with open(log, "a") as handle:
                handle.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} restarted by the supervisor "
                             f"(restart {child.restarts}) ---\n")
        child.log_since = log.stat().st_size
        try:
            child.popen = start_process(name, child.proc.command(self.settings), env=self.env, cwd=REPO_ROOT)
        except OSError as exc:  # could not even be launched: wait as after an exit, then try again
            child.state, child.since, child.popen, child.pid = "restarting", time.time(), None, None
            child.restart_at = self.clock() + child.backoff.on_exit(0.0)
            self.log.warning("%s could not be started (%s); next try in %gs", name, exc, child.restart_at - self.clock())
            return
        child.pid, child.state, child.started, child.since = child.popen.pid, "starting", self.clock(), time.time()
        if first:
            self.log.info("%s started (pid %s)", name, child.pid)
        else:
            self.log.info("%s restarted (pid %s, restart %d)", name, child.pid, child.restarts)

    def _exited(self, child: Child) -> bool:
        if child.popen is not None:
            return child.popen.poll() is not None
        return not alive(child.pid)

    def _on_exit(self, child: Child, now: float) -> None:
        code = child.popen.returncode if child.popen is not None else None
        ran = now - child.started
        if child.pid:
            try:  # whatever it left behind (an API's worker processes hold its port)
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        delay = child.backoff.on_exit(ran, up_s=time.time() - child.since if child.state == "up" else 0.0)
        child.last_exit = {"at": time.time(), "code": code if code is None or code >= 0 else None,
                           "signal": _signal_name(code), "ran_s": round(ran, 1)}
        child.state, child.since, child.popen = "restarting", time.time(), None
        child.restart_at = now + delay
        self.history.append({"name": child.proc.name, "pid": child.pid, **child.last_exit,
                             "restart": child.restarts + 1, "delay_s": delay})
        del self.history[:-HISTORY]
        self.log.warning("%s (pid %s) exited: %s; restart %d in %gs", child.proc.name, child.pid,
                         describe_exit(child.last_exit), child.restarts + 1, delay)

    def _ready(self, child: Child) -> bool:
        from infra.common import log_path

        try:
            return bool(child.proc.ready(Probe(self.settings, log_path(child.proc.name), child.log_since)))
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            return False

    # -- the state file ------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        now = self.clock()
        return {
            "pid": os.getpid(), "mode": self.mode, "state": self.state, "updated_at": time.time(),
            "processes": {c.proc.name: {
                "state": c.state, "pid": c.pid, "restarts": c.restarts, "since": c.since,
                "ever_ready": c.ever_ready, "last_exit": c.last_exit,
                "restart_in_s": round(max(0.0, c.restart_at - now), 1) if c.state == "restarting" else None,
                "restart_at": time.time() + max(0.0, c.restart_at - now) if c.state == "restarting" else None,
            } for c in self.children},
            "exits": list(self.history),
        }

    def _write(self) -> None:
        path = state_path()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".supervisor.", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.snapshot(), handle, indent=1)
        os.replace(tmp, path)  # readers never see half a file


class _Log:
    """Lines appended to ``logs/supervisor.log`` (opened per line: the state folder is read when it is written),
    as text or one JSON object a line (``HERALD_LOG_FORMAT``, see ``herald/logs.py``)."""

    def __init__(self, fmt: str = "text") -> None:
        from herald.logs import check

        self.fmt = check(fmt)

    def info(self, fmt: str, *args) -> None:
        self._write("INFO", fmt % args)

    def warning(self, fmt: str, *args) -> None:
        self._write("WARNING", fmt % args)

    def _write(self, level: str, text: str) -> None:
        from herald.logs import line
        from infra.common import log_path

        with open(log_path(NAME), "a") as handle:
            handle.write(line(self.fmt, level, "herald.supervisor" if self.fmt == "json" else "supervisor", text) + "\n")


def main(argv: list[str] | None = None) -> int:
    """The detached supervisor ``herald up --detach`` starts: supervise the stack's table until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m streams.supervisor",
                                     description="Supervise `herald up`'s processes (started by `herald up --detach`).")
    parser.add_argument("--no-demo", action="store_true", help="leave out the demo producer")
    args = parser.parse_args(argv)
    from streams.stack import PROCESSES

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = Supervisor(PROCESSES, Settings.from_env(), demo=not args.no_demo, mode="detached")
    supervisor.log.info("supervising %s (pid %d)", ", ".join(c.proc.name for c in supervisor.children), os.getpid())
    try:
        supervisor.run(stop)
    finally:
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
