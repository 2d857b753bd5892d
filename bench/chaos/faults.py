"""The fault matrix: what each fault does, when it ends, and which sign of work says the system recovered.

Each fault's ``inject`` runs it to its end (a kill is over at once; an outage ends when the server is back)
and returns extra facts for the report. Recovery is timed from that end to the first sign of work in its
``signals``: ``decisions`` (a decision record written), ``sent:<CHANNEL>`` (a delivery of that channel
reported SENT) or ``api`` (the API answering ``/readyz``). Killed processes are started again by the
supervisor, never by the run. ``quick`` shortens the outages (the CI pass); the full matrix holds the
provider's 503s for a minute, as the issue asks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.common import REPO_ROOT, stop_group


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Callable  # (ctx) -> dict of facts
    signals: tuple[str, ...]


UP_WAIT_S = 60  # how long a fault waits for its process to be up (the supervisor may be restarting it)


def _running_pid(ctx, process: str) -> tuple[int | None, str]:  # noqa: ANN001
    """The pid of ``process`` once the supervisor has it up, or None and why: a fault is not injected into a
    process that is not running (the report shows it skipped; the earlier fault's recovery shows why)."""
    if not ctx.stack.wait_up(process, UP_WAIT_S):
        return None, f"{process} was not up within {UP_WAIT_S} s (state: {ctx.stack.state(process)})"
    pid = ctx.stack.pid(process)
    return (pid, "") if pid else (None, f"{process} has no pid")


def _kill(process: str) -> Callable:
    def inject(ctx) -> dict:  # noqa: ANN001
        pid, why = _running_pid(ctx, process)
        if pid is None:
            return {"skipped": why}
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return {"skipped": f"{process} (pid {pid}) was gone when it was due to be killed"}
        return {"pid": pid}
    return inject


def _restart_server(module_name: str) -> Callable:
    def inject(ctx) -> dict:  # noqa: ANN001
        module = {m.__name__.split(".")[-1]: m for m in ctx.stack.servers()}[module_name]
        module.stop()
        time.sleep(ctx.hold(5, 10))
        started = time.monotonic()
        module.start(progress=lambda line: None)
        return {"start_s": round(time.monotonic() - started, 1)}
    return inject


def _second_worker(ctx, tag: str) -> tuple[subprocess.Popen, Path]:  # noqa: ANN001
    """A second worker of the same app, with a data folder of its own, ready and holding partitions."""
    data = ctx.stack.home / f"worker-{tag}-data"
    data.mkdir(exist_ok=True)
    log = ctx.stack.home / "logs" / f"worker-{tag}.log"
    env = {**os.environ, **ctx.stack.env, "HERALD_DATA_DIR": str(data), "HERALD_WORKER_METRICS_PORT": "-1"}
    # from the repository, as the supervisor starts the first: the same code whatever the interpreter has installed
    proc = subprocess.Popen(ctx.stack.worker_command(), env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 90
    while b"Ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the second worker did not start; see {log}")
        time.sleep(0.25)
    return proc, log


def _stop(proc: subprocess.Popen) -> int | None:
    return stop_group(proc, 60)


def _join_and_leave(ctx) -> dict:  # noqa: ANN001
    proc, _ = _second_worker(ctx, "joiner")
    time.sleep(ctx.hold(8, 20))  # a rebalance, then both deciding
    return {"second_worker_exit": _stop(proc)}


def _zombie(ctx) -> dict:  # noqa: ANN001
    """SIGSTOP the worker past its session timeout while a second one takes its partitions, then wake it."""
    pid, why = _running_pid(ctx, "worker")
    if pid is None:
        return {"skipped": why}
    helper, _ = _second_worker(ctx, "standin")
    time.sleep(5)
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        _stop(helper)
        return {"skipped": f"the worker (pid {pid}) was gone when it was due to be stopped"}
    try:
        time.sleep(ctx.hold(16, 25))  # past the 10 s session timeout: its partitions move
    finally:
        os.kill(pid, signal.SIGCONT)
    ctx.after(lambda: _stop(helper), delay_s=10)  # the stand-in leaves once the zombie has woken
    return {"stopped_pid": pid}


def _provider_outage(ctx) -> dict:  # noqa: ANN001
    """The push and SMS provider: 503s, then 429 with Retry-After, then hanging requests, then healthy."""
    phases = [({"fail_rate": 1.0, "status": 503}, ctx.hold(10, 60)),
              ({"fail_rate": 1.0, "status": 429, "retry_after": 2}, ctx.hold(8, 30)),
              ({"hang_rate": 1.0, "hang_s": 8}, ctx.hold(8, 30))]
    for faults, seconds in phases:
        ctx.sandbox_faults(faults)
        time.sleep(seconds)
    ctx.sandbox_faults({})
    return {"phases_s": [s for _, s in phases]}


def _disk_full(ctx) -> dict:  # noqa: ANN001
    """Fill the worker's tmpfs for a while, then free it."""
    if not ctx.stack.tmpfs:
        return {"skipped": "no tmpfs could be mounted here (needs root and a kernel that allows it)"}
    filler = ctx.stack.data_dir / "filler.bin"
    free = os.statvfs(ctx.stack.data_dir)
    used_mb = round((free.f_blocks - free.f_bfree) * free.f_frsize / 2**20)
    try:
        with open(filler, "wb") as out:
            chunk = b"\0" * (1 << 20)
            for _ in range(free.f_bavail * free.f_frsize // len(chunk) + 1):
                out.write(chunk)
    except OSError:
        pass  # full (at the open itself when the worker's files had filled it already): what we wanted
    time.sleep(ctx.hold(10, 20))
    filler.unlink(missing_ok=True)
    return {"filled_mb": round(free.f_bavail * free.f_frsize / 2**20), "used_before_mb": used_mb}


MATRIX: list[Fault] = [
    Fault("kill-worker", "kill -9 of the worker", _kill("worker"), ("decisions",)),
    Fault("kill-sink-inapp", "kill -9 of the in-app sink", _kill("sink-inapp"), ("sent:INAPP",)),
    Fault("kill-sink-email", "kill -9 of the email sink", _kill("sink-email"), ("sent:EMAIL",)),
    Fault("kill-sink-push", "kill -9 of the push sink", _kill("sink-push"), ("sent:PUSH",)),
    Fault("kill-sink-sms", "kill -9 of the SMS sink", _kill("sink-sms"), ("sent:SMS",)),
    Fault("kill-api", "kill -9 of the API", _kill("api"), ("api",)),
    Fault("zombie-worker", "SIGSTOP of the worker past its session timeout, SIGCONT after its partitions moved",
          _zombie, ("decisions",)),
    Fault("broker-restart", "Kafka stopped, then started again", _restart_server("kafka"), ("decisions", "sent:INAPP")),
    Fault("postgres-restart", "PostgreSQL stopped, then started again", _restart_server("postgres"),
          ("sent:INAPP", "api")),
    Fault("registry-restart", "the schema registry stopped, then started again", _restart_server("registry"),
          ("decisions",)),
    Fault("provider-outage", "push/SMS provider: 503s, then 429 + Retry-After, then hanging", _provider_outage,
          ("sent:PUSH", "sent:SMS")),
    Fault("second-worker", "a second worker joins, then leaves", _join_and_leave, ("decisions",)),
    Fault("disk-full", "the worker's data folder full, then freed", _disk_full, ("decisions",)),
]


def by_name(names: str | None) -> list[Fault]:
    if not names:
        return list(MATRIX)
    known = {f.name: f for f in MATRIX}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown fault(s) {', '.join(unknown)}; the matrix has {', '.join(known)}")
    return [known[n] for n in wanted]


def post_json(url: str, body: dict, timeout: float = 5) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")
