"""Herald's Prometheus: the alerting rules pass promtool, and a real ``prometheus`` (Debian's) started by
``infra/prometheus.py`` scrapes a process from the targets file Herald writes, loads the rules, and answers
every query of the Grafana dashboard and of the status page."""
from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from herald import metrics as herald_metrics
from herald.settings import Settings
from infra import prometheus
from infra.common import InfraError, read_pid
from tests.conftest import free_port

EXPORTED = ("herald_worker_", "herald_sink_", "herald_api_", "up")


def test_the_alerting_rules_pass_promtool():
    assert "SUCCESS: 4 rules found" in prometheus.check_rules()


def test_each_alert_fires_on_its_failure_and_not_before_its_time():
    """``alerts_test.yml``: growing lag, an open breaker, new dead letters and a process down, minute by minute."""
    assert "SUCCESS" in prometheus.test_rules()


def test_a_rule_test_that_expects_another_value_fails(tmp_path):
    import shutil

    shutil.copy(prometheus.RULES, tmp_path / "alerts.yml")
    wrong = tmp_path / "alerts_test.yml"
    wrong.write_text(prometheus.RULES_TEST.read_text().replace("(2200 events unread)", "(2300 events unread)"))
    with pytest.raises(InfraError, match="HeraldConsumerLagGrowing"):
        prometheus.test_rules(wrong)


def test_promtool_refuses_a_broken_rule(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(\n")
    with pytest.raises(InfraError, match="not valid"):
        prometheus.check_rules(bad)


def test_every_dashboard_panel_queries_herald_metrics():
    panels = json.loads(prometheus.DASHBOARD.read_text())["panels"]
    assert len(panels) >= 8
    for panel in panels:
        for target in panel["targets"]:
            names = re.findall(r"\b(herald_[a-z_]+|up)\b", target["expr"])
            assert names and all(n.startswith(EXPORTED) for n in names), target["expr"]


def test_the_scrape_config_reads_the_api_by_port_and_the_rest_from_the_targets_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HERALD_HOME", str(tmp_path))
    settings = Settings.from_env(api_port=18123, prometheus_port=19123)
    cfg = prometheus.config(settings)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["herald-api"]["static_configs"][0]["targets"] == ["127.0.0.1:18123"]
    assert jobs["herald"]["file_sd_configs"][0]["files"] == [str(tmp_path / "prometheus" / "targets.json")]
    assert cfg["rule_files"] == [str(prometheus.RULES)]
    assert prometheus.url(settings) == "http://127.0.0.1:19123"
    assert prometheus.url(Settings.from_env(prometheus_url="http://prom.example:9090/")) == "http://prom.example:9090"


def _query(base: str, expr: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.integration
def test_a_real_prometheus_scrapes_what_the_targets_file_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("HERALD_HOME", str(tmp_path))
    settings = Settings.from_env(prometheus_port=free_port(), api_port=free_port(), app_id="herald-prom-test")
    registry = CollectorRegistry()
    from streams.metrics import WorkerMetrics

    worker = WorkerMetrics(registry)
    worker.events.labels("0").inc(5)
    port = herald_metrics.serve(registry, 0, "worker", "herald-prom-test")
    groups = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    assert {"targets": [f"127.0.0.1:{port}"], "labels": {"process": "worker", "app_id": "herald-prom-test"}} in groups
    status = prometheus.start(settings, progress=lambda _: None)
    try:
        assert status.up and status.version and read_pid("prometheus")
        base = prometheus.url(settings)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = _query(base, 'herald_worker_events_total{process="worker"}')["data"]["result"]
            if got:
                break
            time.sleep(0.5)
        assert got and got[0]["value"][1] == "5" and got[0]["metric"]["app_id"] == "herald-prom-test"
        # the API is not running: its static target is down, which is what HeraldProcessDown watches
        # (each target is scraped at its own offset within the interval: wait for the API's first one)
        while time.monotonic() < deadline:
            down = _query(base, 'up{job="herald-api"}')["data"]["result"]
            if down:
                break
            time.sleep(0.5)
        assert down and down[0]["value"][1] == "0"
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
            rules = {rule["name"] for g in json.loads(r.read())["data"]["groups"] for rule in g["rules"]}
        assert rules == {"HeraldConsumerLagGrowing", "HeraldDeadLettersIncreasing", "HeraldBreakerOpen",
                         "HeraldProcessDown"}
        for panel in json.loads(prometheus.DASHBOARD.read_text())["panels"]:
            for target in panel["targets"]:
                assert _query(base, target["expr"])["status"] == "success", target["expr"]
        assert "1/2 up" in prometheus.status(settings).detail["targets"]
    finally:
        assert prometheus.stop()
    assert not prometheus.status(settings).up and read_pid("prometheus") is None


def test_processes_starting_together_are_all_in_the_targets_file(tmp_path):
    """Each process notes its port, then rewrites the file under a lock: the last writer lists them all."""
    import os
    import subprocess
    import sys

    from infra.common import REPO_ROOT

    code = ("import sys, time; from prometheus_client import CollectorRegistry; from herald.metrics import serve; "
            "print(serve(CollectorRegistry(), 0, 'sink-email', 'together'), flush=True); time.sleep(60)")
    env = {**os.environ, "HERALD_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    try:
        ports = {int(p.stdout.readline()) for p in procs}
        listed = {int(g["targets"][0].rsplit(":", 1)[1])
                  for g in json.loads((tmp_path / "prometheus" / "targets.json").read_text())}
        assert len(ports) == 6 and listed == ports
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
