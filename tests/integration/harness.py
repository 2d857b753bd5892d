"""Herald's own processes for a test: worker, in-app sink and API, as real subprocesses on unique names."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra.common import REPO_ROOT, stop_group

READY = {"worker": "Ready", "sink": "consuming"}


class Pipeline:
    """Starts, kills and restarts Herald processes with one test's settings; logs go to ``logdir``."""

    def __init__(self, unique: str, logdir: Path, api_port: int) -> None:
        self.env = {**os.environ, "HERALD_TOPIC_PREFIX": f"{unique}.", "HERALD_APP_ID": f"{unique}-pipeline",
                    "HERALD_API_PORT": str(api_port), "PYTHONUNBUFFERED": "1",
                    # short windows, so tests see batches and digests go out for real
                    "HERALD_BATCH_WINDOW_S": "2", "HERALD_DIGEST_PERIOD_S": "6", "HERALD_TICK_INTERVAL_S": "0.5"}
        self.settings = Settings.from_env(topic_prefix=f"{unique}.", app_id=f"{unique}-pipeline", api_port=api_port,
                                          batch_window_s=2, digest_period_s=6, tick_interval_s=0.5)
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}

    def prepare(self) -> "Pipeline":
        ensure_topics(self.settings)
        register_schemas(self.settings)
        return self

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}-{self.starts.get(name, 0)}.log"

    def start(self, name: str, timeout: float = 90) -> None:
        argv = {"worker": ["worker"], "sink": ["sink", "inapp"], "api": ["api"]}[name]
        self.starts[name] = self.starts.get(name, 0) + 1
        out = open(self.log(name), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], cwd=REPO_ROOT, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name).read_text()[-3000:]}")
            if self._ready(name):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{name} not ready in {timeout}s:\n{self.log(name).read_text()[-3000:]}")

    def _ready(self, name: str) -> bool:
        if name == "api":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.api_port}/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        return READY[name] in self.log(name).read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop(self) -> None:
        for name in list(self.procs):
            stop_group(self.procs.pop(name), 20)
