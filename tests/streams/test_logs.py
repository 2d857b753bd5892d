"""HERALD_LOG_FORMAT=json: every record one JSON object a line, in each kind of Herald process."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from herald import logs
from infra.common import REPO_ROOT


def test_a_record_becomes_one_json_line_with_level_logger_and_message():
    record = logging.LogRecord("herald.sink", logging.WARNING, __file__, 1, "sink %s: %d held", ("EMAIL", 3), None)
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    out = json.loads(text)
    assert out["level"] == "WARNING" and out["logger"] == "herald.sink" and out["message"] == "sink EMAIL: 3 held"
    assert out["time"].endswith("Z") and out["pid"] == os.getpid()
    assert set(out) == {"time", "level", "logger", "message", "pid"}


def test_an_exception_stays_inside_its_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("herald.api", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text and "RuntimeError: boom" in json.loads(text)["exception"]


def test_an_unknown_format_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="HERALD_LOG_FORMAT must be text or json"):
        logs.check("xml")
    assert logs.check(" JSON ") == "json" and logs.check("") == "text"


def _run(code: str, fmt: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "HERALD_LOG_FORMAT": fmt, "HERALD_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_herald_commands_log_json_lines_when_asked(tmp_path):
    """``_logging()`` is what ``herald sink`` and ``herald api`` call first."""
    code = ("import logging; from streams.commands import _logging; _logging(); "
            "logging.getLogger('herald.sink').info('sink EMAIL consuming herald.delivery.email'); "
            "logging.getLogger('herald.api').warning('slow')")
    out = _run(code, "json", tmp_path)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("INFO", "herald.sink", "sink EMAIL consuming herald.delivery.email"), ("WARNING", "herald.api", "slow")]
    text = _run(code, "text", tmp_path).stderr.splitlines()
    assert text[0].endswith(" INFO herald.sink: sink EMAIL consuming herald.delivery.email")
    bad = subprocess.run([sys.executable, "-m", "streams.cli", "sink", "email"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "HERALD_LOG_FORMAT": "xml", "HERALD_HOME": str(tmp_path)})
    assert bad.returncode != 0 and "HERALD_LOG_FORMAT must be text or json" in bad.stderr
    worker = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "HERALD_LOG_FORMAT": "xml", "HERALD_HOME": str(tmp_path),
                                                        "HERALD_KAFKA_BOOTSTRAP": "127.0.0.1:1"})  # no broker
    assert worker.returncode != 0 and "HERALD_LOG_FORMAT must be text or json" in worker.stderr
    assert "Traceback" not in worker.stderr  # refused in one line, before the broker is asked


def test_the_faust_worker_logging_config_gives_json_lines(tmp_path):
    """What ``herald worker`` hands Faust's Worker: mode's own setup with Herald's formatter."""
    code = ("import logging; from mode.utils.logging import setup_logging; from herald.logs import faust_logging_config; "
            "setup_logging(loglevel='INFO', logging_config=faust_logging_config('json')); "
            "logging.getLogger('faust.worker').info('Ready')")
    out = _run(code, "json", tmp_path)
    got = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [(x["logger"], x["message"]) for x in got] == [("faust.worker", "Ready")]
    assert logs.faust_logging_config("text") is None


def test_the_supervisor_log_is_json_lines_when_asked(tmp_path, monkeypatch):
    from herald.settings import Settings
    from streams.supervisor import Proc, Supervisor, running

    monkeypatch.setenv("HERALD_HOME", str(tmp_path))
    sup = Supervisor([Proc("nothing", ("-c", "pass"), running())], Settings.from_env(log_format="json"), demo=False)
    sup.log.warning("%s (pid %s) exited", "nothing", 42)
    lines = [json.loads(line) for line in (tmp_path / "logs" / "supervisor.log").read_text().splitlines()]
    assert lines[-1]["level"] == "WARNING" and lines[-1]["logger"] == "herald.supervisor"
    assert lines[-1]["message"] == "nothing (pid 42) exited"


def test_the_apis_worker_processes_log_json_lines_too(tmp_path):
    """``herald api`` spawns its worker processes, which start with no logging: they set it up again."""
    code = ("import logging, api.app as app; from herald.settings import Settings; "
            "app.serve = lambda settings, reuse_port: logging.getLogger('herald.api').info('serving'); "
            "app._worker(Settings.from_env())")
    got = json.loads(_run(code, "json", tmp_path).stderr.strip().splitlines()[-1])
    assert (got["logger"], got["message"]) == ("herald.api", "serving")
    text = _run(code, "text", tmp_path).stderr.strip().splitlines()[-1]
    assert text.endswith(f"INFO herald.api[{text.split('[')[1].split(']')[0]}]: serving")


@pytest.mark.integration
def test_herald_worker_writes_json_lines_when_asked(stack, unique, tmp_path):
    """``herald worker`` hands Faust's Worker Herald's logging config: every line it writes, Faust's and
    aiokafka's included, is one JSON object."""
    from tests.conftest import free_port
    from tests.integration.harness import Pipeline

    pipeline = Pipeline(unique, tmp_path, free_port())
    pipeline.env["HERALD_LOG_FORMAT"] = "json"
    pipeline.prepare()
    try:
        pipeline.start("worker")
    finally:
        pipeline.stop()
    lines = [line for line in pipeline.log("worker").read_text().splitlines() if line.strip()]
    got = [json.loads(line) for line in lines]  # a line of text fails here
    assert any(x["logger"] == "faust.worker" and "Ready" in x["message"] for x in got)
    assert {"faust.worker", "aiokafka.consumer.group_coordinator"} <= {x["logger"] for x in got}
    assert all(set(x) == {"time", "level", "logger", "message", "pid"} for x in got)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_message_passes_once_per_period_with_the_count_held_back():
    clock = Clock()
    repeats = logs.Repeats(every_s=10, clock=clock)

    def record(msg, *args, level=logging.ERROR, name="aiokafka"):
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    passed = [repeats.filter(record("Unable connect to node with id %s: %s", 1, "refused")) for _ in range(500)]
    assert passed == [True] + [False] * 499
    assert repeats.filter(record("Unable to update metadata from %s", [1]))  # another message is not held back
    assert repeats.filter(record("Unable connect to node with id %s: %s", 1, "x", level=logging.WARNING))
    clock.now += 10
    again = record("Unable connect to node with id %s: %s", 2, "refused")
    assert repeats.filter(again)
    assert again.getMessage() == "Unable connect to node with id 2: refused [499 more like this in the last 10 s not logged]"
    clock.now += 30
    quiet = record("Unable connect to node with id %s: %s", 2, "refused")
    assert repeats.filter(quiet) and quiet.getMessage() == "Unable connect to node with id 2: refused"


def test_the_workers_aiokafka_logger_keeps_its_filter_through_fausts_logging_setup(tmp_path):
    """``herald worker`` installs the filter, then Faust's Worker sets logging up: the filter must survive it."""
    code = ("import logging; from mode.utils.logging import setup_logging; from streams.commands import _quiet_clients; "
            "_quiet_clients(); setup_logging(loglevel='INFO', logging_config=None); "
            "[logging.getLogger('aiokafka').error('Unable connect to node with id %s: %s', 1, 'refused') for _ in range(1000)]")
    out = _run(code, "text", tmp_path)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "Unable connect" in line]
    assert len(lines) == 1
