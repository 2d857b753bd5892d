"""Serving a process's Prometheus metrics on a port of its own, and finding the ports that are served.

Each long-running process (worker, sinks) serves ``/metrics`` on 127.0.0.1 and notes its port in the state
folder's ``run/metrics/<name>-<pid>.json``, where ``herald status`` finds it; the note goes when the process
exits. Port 0 picks a free one, so several processes on one machine never collide.

Every note written or removed also rewrites ``prometheus/targets.json`` in the state folder: the
``file_sd_configs`` file the local Prometheus (``herald up --monitoring``) reads, one target group per
process with the labels ``process`` (worker, sink-email...) and ``app_id``. Prometheus notices the new file
by itself, so a restarted process on a new port is scraped without a reload. A process killed with -9
keeps its target (its note stays until its pid is gone and another process rewrites the file), so
Prometheus sees it down (``up == 0``) rather than forgetting it.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from herald.paths import subdir

log = logging.getLogger("herald.metrics")


def serve(registry: CollectorRegistry, port: int, process: str, name: str) -> int:
    """Serve ``registry`` on 127.0.0.1:``port`` (0: a free one); note it for ``herald status``; the port."""
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    bound = int(server.server_address[1])
    note = subdir("run", "metrics") / f"{name}-{os.getpid()}.json"
    note.write_text(json.dumps({"process": process, "app_id": name, "pid": os.getpid(), "port": bound}))
    write_targets()

    def forget() -> None:
        note.unlink(missing_ok=True)
        write_targets(leaving=os.getpid())

    atexit.register(forget)
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)
    return bound


def served_ports() -> list[dict]:
    """The metrics ports noted by processes still running."""
    out = []
    for note in sorted(subdir("run", "metrics").glob("*.json")):
        try:
            entry = json.loads(note.read_text())
            os.kill(int(entry["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        out.append(entry)
    return out


def targets_path() -> Path:
    """The file_sd targets file: ``<state folder>/prometheus/targets.json``."""
    return subdir("prometheus") / "targets.json"


def targets(leaving: int | None = None) -> list[dict]:
    """The target groups of the processes serving metrics now (less the process ``leaving``)."""
    return [{"targets": [f"127.0.0.1:{e['port']}"],
             "labels": {"process": str(e.get("process", "")), "app_id": str(e.get("app_id", ""))}}
            for e in served_ports() if e.get("pid") != leaving]


def write_targets(leaving: int | None = None) -> Path:
    """Rewrite the targets file from the notes, atomically (Prometheus never reads half a file).

    Writers take turns (a lock file beside it): processes starting together each write their note first,
    then read every note and write under the lock, so the last writer's file lists them all."""
    path = targets_path()
    tmp = path.with_name(f".targets-{os.getpid()}.tmp")
    try:
        with open(path.with_name(".targets.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tmp.write_text(json.dumps(targets(leaving), indent=1))
            os.replace(tmp, path)
    except OSError as exc:  # the state folder read-only or gone: metrics are still served
        log.warning("could not write %s (%s)", path, exc)
    return path
