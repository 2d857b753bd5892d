"""The supervisor of ``herald up``: backoff schedule, restarts, adoption, stopping; real processes, no server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from herald.settings import Settings
from streams import stack
from streams.supervisor import Backoff, Proc, Supervisor, backoff_delay, log_line, read_state, rows, running, state_path

SLEEPER = ("-c", "import time; print('ready', flush=True); time.sleep(600)")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HERALD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _until(what, timeout: float = 30.0) -> None:
    """Wait for a condition on real processes (start-up, exit); the test fails if it never comes."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.05)


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] == "Z"


def test_backoff_doubles_from_one_second_to_thirty():
    assert [backoff_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff_delay(0) == 0
    assert backoff_delay(10_000) == 30


def test_backoff_starts_afresh_after_a_minute_of_running_or_once_the_process_was_up():
    b = Backoff()
    assert [b.on_exit(2.0) for _ in range(4)] == [1, 2, 4, 8]
    assert b.on_exit(59.9) == 16  # not quite a minute: still failing in a row
    assert b.on_exit(60.0) == 1  # ran fine for a minute: the count starts again
    assert b.on_exit(0.5) == 2
    assert b.on_exit(3.0) == 4
    assert b.on_exit(5.0, up_s=2.9) == 8  # up, but not for long: still failing in a row
    assert b.on_exit(5.0, up_s=3.0) == 1  # it had started: killed once up, it is back at once
    assert b.on_exit(0.5) == 2


def test_argv_is_a_herald_command_or_python_arguments_with_settings_filled():
    settings = Settings(demo_rate=5.0, api_port=18080)
    assert Proc("demo", ("produce", "--rate", "{demo_rate:g}"), running()).command(settings) == \
        [sys.executable, "-m", "streams.cli", "produce", "--rate", "5"]
    assert Proc("x", ("-m", "pkg.mod", "--port={api_port}"), running()).command(settings) == \
        [sys.executable, "-m", "pkg.mod", "--port=18080"]


def test_the_supervised_worker_is_a_static_member_named_for_its_app_and_machine(tmp_path):
    """A worker restarted by the supervisor rejoins under the same name, so the group hands its partitions
    back without a rebalance; the name reaches Faust's consumer as its group.instance.id."""
    import socket

    from streams.app import create_app
    from streams.cli import _parser

    worker = next(p for p in stack.PROCESSES if p.name == "worker")
    argv = worker.command(Settings(app_id="shop"))
    assert argv[-2:] == ["--instance-id", f"shop-worker@{socket.gethostname()}"]
    assert _parser().parse_args(argv[3:]).instance_id == f"shop-worker@{socket.gethostname()}"
    named = create_app(Settings(app_id="shop", data_dir=str(tmp_path), worker_instance_id="shop-worker@h"))
    assert named.conf.consumer_group_instance_id == "shop-worker@h"
    assert create_app(Settings(app_id="shop", data_dir=str(tmp_path))).conf.consumer_group_instance_id is None


def test_the_stack_table_names_every_process_once_and_the_demo_is_demo_only():
    names = [p.name for p in stack.PROCESSES]
    assert names[:3] == ["worker", "sink-inapp", "api"] and len(set(names)) == len(names)
    demo = next(p for p in stack.PROCESSES if p.name == "demo")
    assert demo.demo_only and demo.after_ready
    delivery = {"mailcatcher", "sandbox", "sink-email", "sink-push", "sink-sms"}
    assert Supervisor(stack.PROCESSES, Settings(), demo=False).snapshot()["processes"].keys() == \
        {"worker", "sink-inapp", "api"} | delivery


def test_the_local_provider_stand_ins_run_only_while_the_provider_urls_point_at_them():
    elsewhere = Settings(smtp_url="smtps://user:pass@mail.example.org:465", push_url="https://fcm.googleapis.com",
                         sms_url="https://api.twilio.com")
    names = Supervisor(stack.PROCESSES, elsewhere, demo=False).snapshot()["processes"].keys()
    assert "mailcatcher" not in names and "sandbox" not in names
    assert {"sink-email", "sink-push", "sink-sms"} <= names
    only_sms_local = Settings(push_url="https://fcm.googleapis.com")
    assert "sandbox" in Supervisor(stack.PROCESSES, only_sms_local, demo=False).snapshot()["processes"]


def test_a_killed_process_comes_back_counted_and_stop_restarts_nothing():
    procs = [Proc("a", SLEEPER, log_line("ready")), Proc("b", SLEEPER, log_line("ready"), after_ready=True)]
    sup = Supervisor(procs, Settings(), backoff=lambda: Backoff(base=0.05, cap=0.2))
    try:
        sup.step()
        snap = sup.snapshot()["processes"]
        assert snap["a"]["state"] == "starting" and snap["b"]["state"] == "waiting"  # b waits for a to be up

        def all_up():
            sup.step()
            return all(p["state"] == "up" for p in sup.snapshot()["processes"].values())
        _until(all_up)
        old = sup.snapshot()["processes"]["a"]["pid"]
        os.kill(old, signal.SIGKILL)

        def back():
            sup.step()
            a = sup.snapshot()["processes"]["a"]
            return a["state"] == "up" and a["pid"] != old
        _until(back)
        state = read_state()
        a = state["processes"]["a"]
        assert state["alive"] and a["restarts"] == 1 and a["last_exit"]["signal"] == "SIGKILL"
        assert a["last_exit"]["code"] is None and _dead(old) and not _dead(a["pid"])
        assert state["processes"]["b"]["restarts"] == 0
        assert [(e["name"], e["signal"], e["restart"]) for e in state["exits"]] == [("a", "SIGKILL", 1)]
        assert "restart 1" in (state_path().parent.parent / "logs" / "supervisor.log").read_text()
        name, label, detail = rows(state, ["a"])[0]
        assert "up" in label and "restarts=1" in detail and "SIGKILL" in detail
    finally:
        sup.stop(timeout=5)
    pids = [p["pid"] for p in json.loads(state_path().read_text())["processes"].values()]
    final = read_state()
    assert pids == [None, None] and final["state"] == "stopped" and not final["alive"]
    assert all(p["state"] == "stopped" and p["restarts"] == (1 if n == "a" else 0)
               for n, p in final["processes"].items())


def test_restarts_wait_the_backoff_and_record_the_exit_code():
    clock = Clock()
    sup = Supervisor([Proc("fails", ("-c", "raise SystemExit(3)"), running())], Settings(), clock=clock)
    child = sup.children[0]
    try:
        for restarts, delay in ((0, 1.0), (1, 2.0), (2, 4.0)):
            sup.step()  # starts it (again)
            assert child.restarts == restarts and child.popen is not None
            child.popen.wait(30)
            sup.step()
            info = sup.snapshot()["processes"]["fails"]
            assert info["state"] == "restarting" and info["restart_in_s"] == delay
            assert info["last_exit"]["code"] == 3 and info["last_exit"]["signal"] is None
            assert "restarting in" in rows(sup.snapshot(), ["fails"])[0][1]
            clock.now += delay - 0.1
            sup.step()
            assert child.state == "restarting"  # not before its delay
            clock.now += 0.2
    finally:
        sup.stop(timeout=5)


def test_a_process_already_running_is_adopted_and_restarted_when_it_dies(private_home):
    from infra.common import start_process

    orphan = start_process("a", [sys.executable, *SLEEPER])
    earlier = {"at": time.time() - 100, "code": 1, "signal": None, "ran_s": 3.0}
    state_path().write_text(json.dumps({"pid": 1, "state": "running", "mode": "detached", "processes": {
        "a": {"state": "up", "pid": orphan.pid, "restarts": 4, "last_exit": earlier}}}))  # a supervisor killed -9
    sup = Supervisor([Proc("a", SLEEPER, running())], Settings(), backoff=lambda: Backoff(base=0.05))
    try:
        sup.step()
        adopted = sup.snapshot()["processes"]["a"]
        assert adopted["pid"] == orphan.pid and adopted["state"] == "up"  # not started twice
        assert adopted["restarts"] == 4 and adopted["last_exit"] == earlier  # the killed supervisor's counts go on
        os.kill(orphan.pid, signal.SIGKILL)
        orphan.wait(10)  # the "other parent" reaps it, as init would

        def back():
            sup.step()
            a = sup.snapshot()["processes"]["a"]
            return a["state"] == "up" and a["pid"] != orphan.pid
        _until(back)
        a = sup.snapshot()["processes"]["a"]
        assert a["restarts"] == 5 and a["last_exit"]["code"] is None and a["last_exit"]["signal"] is None
        assert "code unknown" in rows(sup.snapshot(), ["a"])[0][2]
    finally:
        sup.stop(timeout=5)


def test_an_exit_kills_what_the_process_left_in_its_group():
    script = ("import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(600)']).pid, flush=True); time.sleep(600)")
    sup = Supervisor([Proc("parent", ("-c", script), running())], Settings(), backoff=lambda: Backoff(base=60))
    try:
        sup.step()
        parent = sup.children[0].pid
        from infra.common import log_path

        _until(lambda: log_path("parent").read_text().strip() != "")
        grandchild = int(log_path("parent").read_text().split()[0])
        os.kill(parent, signal.SIGKILL)
        _until(lambda: (sup.step(), sup.children[0].state == "restarting")[1])
        _until(lambda: _dead(grandchild))
    finally:
        sup.stop(timeout=5)


def test_status_shows_the_supervisor_and_each_process_restarts(private_home, monkeypatch):
    """`herald status` with no server: every server down, the processes' restarts from the state file."""
    sup = Supervisor([Proc("worker", SLEEPER, running())], Settings(), backoff=lambda: Backoff(base=0.05))
    try:
        sup.step()
        old = sup.children[0].pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: (sup.step(), sup.children[0].state == "up" and sup.children[0].pid != old)[1])
        env = {**os.environ, "COLUMNS": "250", "HERALD_KAFKA_BOOTSTRAP": "127.0.0.1:1",
               "HERALD_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1/apis/ccompat/v7",
               "HERALD_DATABASE_URL": "postgresql://herald:herald@127.0.0.1:1/herald"}
        out = subprocess.run([sys.executable, "-m", "streams.cli", "status"], env=env, capture_output=True,
                             text=True, timeout=120)
        text = out.stdout + out.stderr
        line = next(row for row in text.splitlines() if row.strip("│ ").startswith("worker"))
        assert "up" in line and "restarts=1" in line and "SIGKILL" in line, text
        assert any(row.strip("│ ").startswith("supervisor") and "up" in row for row in text.splitlines()), text
    finally:
        sup.stop(timeout=5)


def test_up_with_no_servers_starts_none_when_one_does_not_answer(private_home):
    env = {**os.environ, "HERALD_HOME": str(private_home), "HERALD_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "HERALD_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1/apis/ccompat/v7",
           "HERALD_DATABASE_URL": "postgresql://herald:herald@127.0.0.1:1/herald"}
    out = subprocess.run([sys.executable, "-m", "streams.cli", "up", "--detach", "--no-servers"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--no-servers starts none" in out.stderr, out.stderr
    assert not list((private_home / "run").glob("*.pid"))  # no server, no supervisor, no process


def test_a_failed_pass_does_not_end_supervision(private_home):
    sup = Supervisor([], Settings())
    stop = threading.Event()
    passes = []

    def step() -> None:
        passes.append(1)
        if len(passes) == 1:
            raise OSError("no space left on device")
        stop.set()
    sup.step = step  # type: ignore[method-assign]
    sup.run(stop, interval=0)
    assert len(passes) == 2
    assert "no space left on device" in (private_home / "logs" / "supervisor.log").read_text()


def test_a_process_that_cannot_be_launched_is_tried_again_after_the_backoff(monkeypatch):
    import infra.common

    def refuse(*args, **kwargs):
        raise OSError("exec format error")
    monkeypatch.setattr(infra.common, "start_process", refuse)
    clock = Clock()
    sup = Supervisor([Proc("a", SLEEPER, running())], Settings(), clock=clock)
    sup.step()
    a = sup.snapshot()["processes"]["a"]
    assert a["state"] == "restarting" and a["restart_in_s"] == 1.0 and a["pid"] is None
    clock.now += 1.0
    sup.step()
    assert sup.snapshot()["processes"]["a"]["restart_in_s"] == 2.0  # failing in a row: the delay doubles


def test_the_live_view_shows_each_process_state_restarts_and_last_exit():
    from rich.console import Console

    from streams.dashboard import Flow

    flow = Flow(Settings())
    flow.processes = {"processes": {
        "worker": {"state": "up", "pid": 41, "restarts": 2,
                   "last_exit": {"at": time.time(), "code": None, "signal": "SIGKILL", "ran_s": 12.0}},
        "api": {"state": "restarting", "pid": 42, "restarts": 0, "restart_at": time.time() + 4,
                "last_exit": {"at": time.time(), "code": 1, "signal": None, "ran_s": 0.4}}}}
    console = Console(record=True, width=200)
    console.print(flow.render())
    text = console.export_text()
    worker = next(line for line in text.splitlines() if "worker" in line)
    api = next(line for line in text.splitlines() if " api " in line)
    assert "up" in worker and "restarts=2" in worker and "SIGKILL" in worker
    assert "restarting in" in api and "code 1" in api


def test_up_fails_with_the_log_tail_when_a_process_exits_before_it_is_ready():
    from infra.common import InfraError

    failing = Proc("worker", ("-c", "print('no broker here', flush=True); raise SystemExit(3)"), log_line("Ready"))
    sup = Supervisor([failing], Settings(), backoff=lambda: Backoff(base=60))
    try:
        with pytest.raises(InfraError) as info:
            stack._wait_ready(lambda: (sup.step(), sup.snapshot())[1], ["worker"])
        assert "worker: the process exited (code 3" in str(info.value) and "no broker here" in str(info.value)
    finally:
        sup.stop(timeout=5)
