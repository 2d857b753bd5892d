"""Serving a process's Prometheus metrics on a port of its own, and finding the ports that are served.

Each long-running process (worker, sinks) serves ``/metrics`` on 127.0.0.1 and notes its port in the state
folder's ``run/metrics/<name>-<pid>.json``, where ``herald status`` finds it; the note goes when the process
exits. Port 0 picks a free one, so several processes on one machine never collide.
"""
from __future__ import annotations

import atexit
import json
import logging
import os

from prometheus_client import CollectorRegistry, start_http_server

from herald.paths import subdir

log = logging.getLogger("herald.metrics")


def serve(registry: CollectorRegistry, port: int, process: str, name: str) -> int:
    """Serve ``registry`` on 127.0.0.1:``port`` (0: a free one); note it for ``herald status``; the port."""
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    bound = int(server.server_address[1])
    note = subdir("run", "metrics") / f"{name}-{os.getpid()}.json"
    note.write_text(json.dumps({"process": process, "app_id": name, "pid": os.getpid(), "port": bound}))
    atexit.register(lambda: note.unlink(missing_ok=True))
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
