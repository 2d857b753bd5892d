"""The whole local stack of one chaos run, on servers of its own, so its faults touch nothing else.

A run gets a state folder of its own (``<state folder>/chaos/<run id>``, the downloaded jars shared through
a ``cache`` link), its own Kafka, schema registry and PostgreSQL on free ports, and Herald's processes
under the same supervisor ``herald up --detach`` uses (``python -m streams.supervisor --no-demo``): worker,
in-app/email/push/SMS sinks, API, the local SMTP server and provider sandbox. A process a fault kills is
started again by that supervisor, as in production by systemd or Kubernetes; the run never restarts one
itself. The worker's RocksDB lives on a small tmpfs when the machine allows mounting one (for the
disk-full fault); otherwise in the run's folder, and that fault is reported as not possible here.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from herald.paths import REPO_ROOT

SETTINGS = {  # short windows and retries, so a few minutes show every path end to end
    "HERALD_BATCH_WINDOW_S": "3", "HERALD_DIGEST_PERIOD_S": "10", "HERALD_TICK_INTERVAL_S": "0.5",
    "HERALD_PARTITIONS": "4", "HERALD_API_WORKERS": "1", "HERALD_STANDBY_REPLICAS": "0",
    "HERALD_SINK_SEND_TIMEOUT_S": "3", "HERALD_SINK_RETRY_BASE_S": "0.5", "HERALD_SINK_RETRY_MAX_S": "4",
    "HERALD_SINK_MAX_ATTEMPTS": "60", "HERALD_SINK_CLAIM_LEASE_S": "20", "HERALD_SINK_BREAKER_OPEN_S": "3",
    "HERALD_PRESENCE_TTL_S": "30", "PYTHONUNBUFFERED": "1",
    # some sends throttled, but the stream's users stay under the hour's and the day's limits
    "HERALD_RATE_PER_MINUTE": "20", "HERALD_RATE_PER_HOUR": "2000", "HERALD_RATE_PER_DAY": "20000",
}
PROCESSES = ("worker", "sink-inapp", "api", "mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms")


def free_port_pair(rng: random.Random) -> int:
    """A free port whose successor is free too, below the ephemeral range (an outgoing connection never takes it)."""
    for _ in range(500):
        port = rng.randrange(20000, 31000)
        if all(_free(p) for p in (port, port + 1)):
            return port
    raise RuntimeError("no two free ports in a row between 20000 and 31000")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Stack:
    """The run's servers and processes. ``env`` is what every Herald process (and this one) sees."""

    def __init__(self, run_id: str, base: Path, disk_mb: int = 1024, exactly_once: bool = True) -> None:
        self.run_id = run_id
        self.home = base / "chaos" / run_id
        self.home.mkdir(parents=True, exist_ok=True)
        cache = base / "cache"
        cache.mkdir(exist_ok=True)
        if not (self.home / "cache").exists():
            (self.home / "cache").symlink_to(cache)
        rng = random.Random()
        kafka, registry, pg, api, smtp, provider = (free_port_pair(rng) for _ in range(6))
        self.api_port, self.smtp_port, self.provider_port = api, smtp, provider
        self.data_dir = self.home / "worker-data"
        self.data_dir.mkdir(exist_ok=True)
        self.disk_mb = disk_mb
        self.tmpfs = self._mount(self.data_dir, disk_mb)
        self.env = {
            "HERALD_HOME": str(self.home),
            "HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}", "HERALD_KAFKA_CONTROLLER_PORT": str(kafka + 1),
            "HERALD_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{registry}/apis/ccompat/v7",
            "HERALD_DATABASE_URL": f"postgresql://herald:herald@127.0.0.1:{pg}/herald",
            "HERALD_TOPIC_PREFIX": "herald.", "HERALD_APP_ID": f"chaos-{run_id}",
            "HERALD_API_PORT": str(api), "HERALD_SMTP_URL": f"smtp://127.0.0.1:{smtp}",
            "HERALD_PUSH_URL": f"http://127.0.0.1:{provider}", "HERALD_SMS_URL": f"http://127.0.0.1:{provider}",
            "HERALD_SMS_STATUS_CALLBACK_URL": "https://receipts.chaos.invalid/sms",
            "HERALD_JWT_SECRET": secrets.token_urlsafe(48), "HERALD_DATA_DIR": str(self.data_dir),
            **SETTINGS, "HERALD_EXACTLY_ONCE": "1" if exactly_once else "0",
        }
        self.supervisor: subprocess.Popen | None = None

    # -- the servers -------------------------------------------------------------------------------

    @staticmethod
    def _mount(path: Path, size_mb: int) -> bool:
        """A tmpfs of ``size_mb`` on ``path`` (root and a kernel that allows it); False when it cannot be had."""
        if os.geteuid() != 0 or not shutil.which("mount"):
            return False
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
        return done.returncode == 0

    def servers(self):  # noqa: ANN201 - the infra modules, in start order
        from infra import kafka, postgres, registry

        return postgres, kafka, registry

    def start_servers(self, say) -> None:  # noqa: ANN001
        os.environ.update(self.env)
        for module in self.servers():
            module.start(progress=lambda line: None)
            say(f"  {module.__name__.split('.')[-1]} up")
        from herald.settings import Settings
        from herald.topics import ensure_topics, register_schemas
        from infra import postgres

        postgres.migrate()
        settings = Settings.from_env()
        ensure_topics(settings)
        register_schemas(settings)

    # -- Herald's processes --------------------------------------------------------------------------

    def start_herald(self, timeout: float = 180) -> None:
        log = open(self.home / "supervisor-stdout.log", "ab")
        self.supervisor = subprocess.Popen([sys.executable, "-m", "streams.supervisor", "--no-demo"], cwd=REPO_ROOT,
                                           env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited; see {self.home / 'logs'}")
            if all(self.state(name) == "up" for name in PROCESSES):
                return
            time.sleep(0.5)
        raise TimeoutError(f"not every process was up within {timeout:.0f} s: "
                           f"{ {n: self.state(n) for n in PROCESSES} }; logs in {self.home / 'logs'}")

    def snapshot(self) -> dict:
        try:
            return json.loads((self.home / "run" / "supervisor.json").read_text())
        except (OSError, ValueError):
            return {}

    def state(self, name: str) -> str | None:
        return self.snapshot().get("processes", {}).get(name, {}).get("state")

    def pid(self, name: str) -> int | None:
        return self.snapshot().get("processes", {}).get(name, {}).get("pid")

    def restarts(self) -> dict[str, int]:
        return {n: p.get("restarts", 0) for n, p in self.snapshot().get("processes", {}).items()}

    def wait_up(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(name) == "up":
                return True
            time.sleep(0.25)
        return False

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "streams.cli", "worker"]

    def stop(self) -> None:
        """The supervisor (which stops its processes), then the servers, then the tmpfs."""
        if self.supervisor is not None and self.supervisor.poll() is None:
            os.killpg(self.supervisor.pid, signal.SIGTERM)
            try:
                self.supervisor.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.supervisor.pid, signal.SIGKILL)
        for name, proc in self.snapshot().get("processes", {}).items():  # anything a killed supervisor left
            if proc.get("pid"):
                try:
                    os.killpg(proc["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for module in reversed(self.servers()):
            try:
                module.stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                pass
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.data_dir)], capture_output=True, timeout=30)
