"""Prometheus for Herald: Debian's ``prometheus`` as a local process scraping Herald's own processes.

Rules:

- The binary comes from the distribution (``apt-get install -y prometheus``; ``infra/bootstrap.sh`` installs
  it). Nothing is downloaded. Debian's own service is not used: Herald starts its own process, detached, on
  127.0.0.1:``HERALD_PROMETHEUS_PORT`` (default 9090), with its data in ``<HERALD_HOME>/prometheus/data``,
  its log in ``logs/prometheus.log`` and its pid in ``run/prometheus.pid``. ``stop`` stops only that one.
- Its configuration, ``<HERALD_HOME>/prometheus/prometheus.yml``, is written at every start: the API is a
  static target at ``HERALD_API_PORT``; the worker and sinks, whose ports are picked at start, come from
  ``prometheus/targets.json``, which each of them rewrites when it starts and exits (``herald.metrics``).
  The alerting rules are ``infra/prometheus/alerts.yml`` (checked by ``promtool check rules`` in the tests,
  and fed made-up series by ``promtool test rules`` with ``alerts_test.yml``);
  ``infra/prometheus/dashboard.json`` is a Grafana dashboard of the same metrics for those who run Grafana.
- A port already taken by another process is refused, as for the other servers.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Callable

from herald.metrics import targets_path, write_targets
from herald.settings import Settings
from infra.common import InfraError, ServiceStatus, ensure_port_free, log_path, read_pid, start_process, stop_process, subdir, wait_until

NAME = "prometheus"
HERE = Path(__file__).resolve().parent / "prometheus"
RULES = HERE / "alerts.yml"
RULES_TEST = HERE / "alerts_test.yml"
DASHBOARD = HERE / "dashboard.json"
NOT_INSTALLED = "prometheus not installed: run `apt-get install -y prometheus` (infra/bootstrap.sh does)"
SCRAPE_INTERVAL = "5s"
RETENTION = "7d"


def binary(name: str = "prometheus") -> str:
    """The path of Debian's ``prometheus`` (or ``promtool``); InfraError saying how to install it if missing."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise InfraError(NOT_INSTALLED)
    return found


def url(settings: Settings) -> str:
    """Where Prometheus answers: ``HERALD_PROMETHEUS_URL``, else the local one on ``HERALD_PROMETHEUS_PORT``."""
    return (settings.prometheus_url or f"http://127.0.0.1:{settings.prometheus_port}").rstrip("/")


def config(settings: Settings) -> dict:
    """The scrape configuration: the API by its port, the other processes from the targets file."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "external_labels": {"herald_app": settings.app_id}},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "herald-api", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"127.0.0.1:{settings.api_port}"],
                                 "labels": {"process": "api", "app_id": settings.app_id}}]},
            {"job_name": "herald", "metrics_path": "/metrics",
             "file_sd_configs": [{"files": [str(targets_path())], "refresh_interval": "10s"}]},
        ],
    }


def write_config(settings: Settings) -> Path:
    """Write ``prometheus.yml`` (JSON, which YAML reads) and the targets file; the config's path."""
    path = subdir(NAME) / "prometheus.yml"
    path.write_text("# written by Herald (infra/prometheus.py) at every start; edits are lost\n"
                    + json.dumps(config(settings), indent=2) + "\n")
    write_targets()
    return path


def _ready(settings: Settings) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.prometheus_port}/-/ready", timeout=1) as r:
        return r.status == 200


def start(settings: Settings | None = None, progress: Callable[[str], None] = print) -> ServiceStatus:
    """Start Herald's Prometheus unless ours already runs; wait until it is ready; its status."""
    settings = settings or Settings.from_env()
    prometheus = binary()
    if read_pid(NAME) is not None:
        return status(settings)
    cfg = write_config(settings)
    ensure_port_free(NAME, "127.0.0.1", settings.prometheus_port, "HERALD_PROMETHEUS_PORT")
    log = log_path(NAME)
    log.write_text("")
    proc = start_process(NAME, [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={subdir(NAME, 'data')}",
                                f"--storage.tsdb.retention.time={RETENTION}",
                                f"--web.listen-address=127.0.0.1:{settings.prometheus_port}"])
    progress(f"{NAME}: starting on 127.0.0.1:{settings.prometheus_port}…")
    wait_until(lambda: _ready(settings), 60, NAME, log, proc)
    return status(settings)


def stop() -> bool:
    """Stop the Prometheus Herald started (none other). True if one was running."""
    return stop_process(NAME, timeout=20)


def version() -> str:
    try:
        out = subprocess.run([binary(), "--version"], capture_output=True, text=True, timeout=10)
    except (InfraError, OSError, subprocess.TimeoutExpired):
        return ""
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].split("version", 1)[-1].split()[0] if first and "version" in first[0] else ""


def status(settings: Settings | None = None) -> ServiceStatus:
    """Up when ours runs and answers ready; the detail counts the targets it scrapes and how many are up."""
    settings = settings or Settings.from_env()
    address = url(settings)
    pid = read_pid(NAME)
    try:
        up = _ready(settings)
    except OSError:
        up = False
    detail: dict = {"pid": pid} if pid else {}
    if up:
        try:
            with urllib.request.urlopen(f"{address}/api/v1/targets?state=active", timeout=2) as r:
                active = json.loads(r.read())["data"]["activeTargets"]
            detail["targets"] = f"{sum(t['health'] == 'up' for t in active)}/{len(active)} up"
        except (OSError, ValueError, KeyError):
            pass
    return ServiceStatus(NAME, up, address, version() if up else "", detail)


def test_rules(path: Path = RULES_TEST) -> str:
    """``promtool test rules`` on ``path`` (alerts fed made-up series); its output. InfraError on a failure."""
    out = subprocess.run([binary("promtool"), "test", "rules", path.name], capture_output=True, text=True,
                         timeout=120, cwd=path.parent)
    if out.returncode != 0:
        raise InfraError(f"promtool: the rule tests in {path} failed: {(out.stdout + out.stderr).strip()[-1500:]}")
    return out.stdout + out.stderr


def check_rules(path: Path = RULES) -> str:
    """``promtool check rules`` on ``path``; its output. InfraError when promtool finds a mistake."""
    out = subprocess.run([binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise InfraError(f"promtool: {path} is not valid: {(out.stdout + out.stderr).strip()[-600:]}")
    return out.stdout + out.stderr
