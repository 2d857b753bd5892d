"""``herald up``, ``down`` and ``status``: the local stack as processes, started in dependency order.

Servers first (PostgreSQL, Kafka, then the registry, which keeps its schemas in Kafka), then the
topics and schemas, then Herald's own processes (``PROCESSES``: worker, in-app sink, API, the demo
producer), which a supervisor (``streams/supervisor.py``) keeps running: one that exits or is killed is
started again, with backoff. A server already answering on its address is used as it is and left
running by ``down``. Every process logs to ``.herald/logs/<name>.log``; ``down`` stops the supervisor
first, then the processes in reverse order, then Prometheus, then the servers it started. With
``--monitoring`` Herald's Prometheus (``infra/prometheus.py``) starts after the servers, scraping every
process; ``status`` lists it once it runs.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

from rich.console import Console

from herald.metrics import served_ports
from herald.settings import Settings
from infra import kafka, postgres, prometheus, registry
from infra.common import REPO_ROOT, InfraError, ServiceStatus, _tail, log_path, read_pid, start_process, stop_process
from streams import supervisor as ready  # the readiness checks: ready.log_line, http_ok, tcp_port, running
from streams.supervisor import NAME as SUPERVISOR
from streams.supervisor import Proc, Supervisor, alive, describe_exit, fill, read_state, rows

console = Console(stderr=True, highlight=False)
SERVERS = (("postgres", postgres), ("kafka", kafka), ("registry", registry))
# the demo's short windows, and a provider sandbox that fails a few sends so retries show (unless you chose)
DEMO_WINDOWS = {"HERALD_BATCH_WINDOW_S": "10", "HERALD_DIGEST_PERIOD_S": "60",
                "HERALD_SANDBOX_FAULTS": '{"fail_rate": 0.05, "status": 503}'}
READY_TIMEOUT_S = 120


def _local(url: str) -> bool:
    """True when ``url`` points at this machine (127.0.0.1 or localhost): a local stand-in serves it."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost")


# Every process `herald up` starts and supervises, in start order (`down` stops them in reverse).
# One line each: name, `herald` arguments (or "-m", "module", ...), readiness check; see supervisor.Proc.
# e.g. Proc("mailcatcher", ("-m", "infra.mailcatcher", "--port", "2525"), ready.tcp_port(2525)),
PROCESSES: list[Proc] = [
    Proc("worker", ("worker", "--instance-id", "{app_id}-worker@{hostname}"), ready.log_line("Ready")),
    Proc("sink-inapp", ("sink", "inapp"), ready.log_line("consuming")),
    Proc("api", ("api",), ready.http_ok("http://127.0.0.1:{api_port}/readyz")),
    # delivery: the local stand-ins for the providers (only while the provider URLs point at them), then the sinks
    Proc("mailcatcher", ("-m", "infra.mailcatcher", "--port", "{smtp_port}", "--http-port", "{mail_page_port}"),
         ready.log_line("mailcatcher listening on"), only_if=lambda s: _local(s.smtp_url)),
    Proc("sandbox", ("-m", "infra.sandbox", "--port", "{provider_port}"), ready.log_line("sandbox listening on"),
         only_if=lambda s: _local(s.push_url) or _local(s.sms_url)),
    Proc("sink-email", ("sink", "email"), ready.log_line("consuming")),
    Proc("sink-push", ("sink", "push"), ready.log_line("consuming")),
    Proc("sink-sms", ("sink", "sms"), ready.log_line("consuming")),
    Proc("demo", ("produce", "--demo", "--quiet", "--rate", "{demo_rate:g}"), ready.running(), demo_only=True,
         after_ready=True),
]


def _say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def start_servers(settings: Settings, start: bool = True) -> dict[str, ServiceStatus]:
    """Start each server unless one already answers on its address (then it is used as it is).

    With ``start`` false none is started: each must answer already (else InfraError); the database is
    still migrated."""
    started = {}
    for name, module in SERVERS:
        t0 = time.monotonic()
        if not start:
            status = module.status()
            if not status.up:
                raise InfraError(f"{name}: nothing answers on {status.address} and --no-servers starts none; "
                                 f"start it, or run `herald up` without --no-servers")
            if name == "postgres":
                postgres.migrate()
        elif name == "registry" and read_pid(name) is None and _answers(module):
            # infra.registry.start refuses a taken port; a registry answering there is one we can use
            status = module.status()
            _say(f"{name}: a registry already answers on {status.address}; using it")
        else:
            status = module.start(progress=_say)
        started[name] = status
        _say(f"[green]✓[/] {name} ready on {status.address} ({time.monotonic() - t0:.1f}s)")
    return started


def _answers(module) -> bool:
    try:
        return module.status().up
    except Exception:  # noqa: BLE001 - not answering, whatever the reason
        return False


def prepare(settings: Settings) -> None:
    from herald.topics import ensure_topics, register_schemas

    topics = ensure_topics(settings)
    ids = register_schemas(settings)
    _say(f"[green]✓[/] {len(topics)} topics, {len(ids)} schemas registered (BACKWARD_TRANSITIVE)")


def _environment(demo: bool, rate: float | None) -> dict[str, str]:
    """What the processes get on top of our environment: the demo's short windows (unless you chose yours)."""
    env = {k: v for k, v in DEMO_WINDOWS.items() if demo and not os.environ.get(k)}
    if rate:
        env["HERALD_DEMO_RATE"] = f"{rate:g}"
    return env


def _wait_ready(snapshot, names: list[str], supervisor_proc: subprocess.Popen | None = None) -> None:
    """Wait until every process in ``names`` is up, saying so for each; fail on its first exit before it was ready."""
    t0 = time.monotonic()
    pending = list(names)
    while pending:
        if supervisor_proc is not None and supervisor_proc.poll() is not None:
            raise InfraError(f"supervisor: exited with code {supervisor_proc.returncode} before every process was "
                             f"ready; see {log_path(SUPERVISOR)}{_tail(log_path(SUPERVISOR))}")
        procs = snapshot().get("processes", {})
        for name in list(pending):
            info = procs.get(name)
            if info is None:
                continue
            if info["state"] == "up":
                pending.remove(name)
                _say(f"[green]✓[/] {name} ready ({time.monotonic() - t0:.1f}s, log: {log_path(name)})")
            elif info.get("last_exit") and not info.get("ever_ready"):
                raise InfraError(f"{name}: the process exited ({describe_exit(info['last_exit'])}) before it was "
                                 f"ready; see {log_path(name)}{_tail(log_path(name))}")
        if pending and time.monotonic() - t0 > READY_TIMEOUT_S:
            name = pending[0]
            raise InfraError(f"{name}: not ready after {READY_TIMEOUT_S}s; see {log_path(name)}{_tail(log_path(name))}")
        time.sleep(0.25)


def up(settings: Settings, detach: bool, demo: bool, rate: float | None, servers: bool = True,
       monitoring: bool = False) -> int:
    """Bring the stack up (``servers`` false: use the servers already answering, start none; ``monitoring``:
    Herald's Prometheus too, scraping every process, for the API's /status page)."""
    t0 = time.monotonic()
    env = _environment(demo, rate)
    if rate:
        settings = dataclasses.replace(settings, demo_rate=rate)
    names = [p.name for p in PROCESSES if p.wanted(settings, demo)]
    running = read_state()
    try:
        start_servers(settings, start=servers)
        prepare(settings)
        if monitoring:
            t1 = time.monotonic()
            status = prometheus.start(settings, progress=_say)
            _say(f"[green]✓[/] prometheus ready on {status.address} ({time.monotonic() - t1:.1f}s)")
        if running.get("alive"):
            _say(f"already running, supervised by pid {running['pid']} ({running['mode']})")
            _wait_ready(read_state, [n for n in names if n in running.get("processes", {})])
        elif detach:
            proc = start_process(SUPERVISOR, [sys.executable, "-m", "streams.supervisor",
                                              *([] if demo else ["--no-demo"])], env=env, cwd=REPO_ROOT)
            _say(f"supervisor started (pid {proc.pid}, log: {log_path(SUPERVISOR)})")
            # until the new supervisor writes its state, the file may hold a previous run's
            _wait_ready(lambda: _state_of(proc.pid), names, proc)
    except InfraError as exc:
        console.print(f"[red]✗ {exc}[/]")
        if detach:
            _stop_supervisor()
            _say("Herald's processes stopped; the servers keep running (`herald down` stops them)")
        else:
            down()
        return 1
    if detach or running.get("alive"):
        _say(f"[bold]Herald is up[/] in {time.monotonic() - t0:.1f}s")
        _where(settings)
        if detach:
            _say("running in the background, supervised; `herald down` stops it")
            return 0
        _watch(settings, read_state)
        _say("still running in the background; `herald down` stops it")
        return 0
    return _foreground(settings, demo, env, names, t0)


def _state_of(pid: int) -> dict:
    state = read_state()
    return state if state.get("pid") == pid else {}


def _foreground(settings: Settings, demo: bool, env: dict, names: list[str], t0: float) -> int:
    """Supervise in this process (a thread) while the live view runs; Ctrl-C or SIGTERM stops everything."""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `herald down` from another terminal
    supervisor = Supervisor(PROCESSES, settings, demo=demo, env=env, mode="foreground")
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), name="supervisor", daemon=True)
    thread.start()
    try:
        _wait_ready(lambda: _thread_snapshot(supervisor, thread), names)
        _say(f"[bold]Herald is up[/] in {time.monotonic() - t0:.1f}s")
        _where(settings)
        return _watch(settings, lambda: _thread_snapshot(supervisor, thread))
    except InfraError as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the stopping short
        console.print()
        stop.set()
        thread.join()
        supervisor.stop(say=_say)
        down()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _thread_snapshot(supervisor: Supervisor, thread: threading.Thread) -> dict:
    if not thread.is_alive():
        raise InfraError(f"supervisor: its thread ended; see {log_path(SUPERVISOR)}")
    return supervisor.snapshot()


def _watch(settings: Settings, processes) -> int:
    from streams.dashboard import watch

    try:
        watch(settings, processes)
    except KeyboardInterrupt:
        pass
    return 0


def _where(settings: Settings) -> None:
    from api import auth, inbox
    from streams.demo import SAMPLE_USER

    token = auth.mint(auth.signing_secret(settings), SAMPLE_USER)
    base = f"http://127.0.0.1:{settings.api_port}"
    stand_ins = ""
    if _local(settings.smtp_url):
        page = fill("{mail_page_port}", settings)
        stand_ins += f"\n  emails         http://127.0.0.1:{page}/messages   (what the local mail catcher received)"
    if _local(settings.push_url) or _local(settings.sms_url):
        port = fill("{provider_port}", settings)
        stand_ins += f"\n  push and SMS   http://127.0.0.1:{port}/_sandbox/messages   (what the provider sandbox received)"
    console.print(f"""
  inbox page     {inbox.url(settings.api_port, token)}{stand_ins}
  API            {base}/v1/users/{SAMPLE_USER}/unread-count   (header: Authorization: Bearer <token>)
  token          herald token {SAMPLE_USER}     (one for the sample user: {token[:24]}…)
  try            curl -s -H "Authorization: Bearer $(herald token {SAMPLE_USER})" \\
                   {base}/v1/users/{SAMPLE_USER}/notifications?limit=3
  decisions      herald tail {settings.topic('decisions')}
  dead letters   herald tail {settings.topic('dlq')} --from-beginning
  metrics        {base}/metrics        logs  {log_path('worker').parent}/
  status page    {base}/status   ({_monitoring_note(settings)})
""")


def _monitoring_note(settings: Settings) -> str:
    state = prometheus.status(settings)
    return f"rates and lag from Prometheus at {state.address}" if state.up else "start `herald up --monitoring` to fill it"


def down() -> None:
    """Stop the supervisor first (so nothing restarts what follows), then the processes, then our servers."""
    _stop_supervisor()
    for proc in reversed(PROCESSES):
        if stop_process(proc.name, timeout=20):
            _say(f"stopped {proc.name}")
    if prometheus.stop():
        _say("stopped prometheus")
    for name, module in reversed(SERVERS):
        if module.stop():
            _say(f"stopped {name}")


def _stop_supervisor(timeout: float = 150) -> None:
    """Stop a detached supervisor (it stops its processes), or ask a foreground ``herald up`` elsewhere to stop."""
    if stop_process(SUPERVISOR, timeout=timeout):
        _say("stopped the supervisor and its processes")
        return
    state = read_state()
    pid = int(state.get("pid") or 0)
    if not state.get("alive") or pid == os.getpid():
        return
    os.kill(pid, signal.SIGTERM)  # a foreground `herald up`: it stops everything, as on Ctrl-C
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):  # it stops the processes, then our servers, then exits
        time.sleep(0.2)
    _say(f"stopped `herald up` (pid {pid})")


def _show_breakers() -> None:
    """The sinks' circuit breakers as each sink last wrote them (none before a sink has run)."""
    from rich.table import Table

    from herald.paths import subdir
    from sinks.breaker import read_states

    states = read_states(subdir("run"))
    if not states:
        return
    table = Table(title="circuit breakers")
    for col in ("channel", "provider", "state", "detail"):
        table.add_column(col)
    now = time.time()
    for b in states:
        detail = f"failures={b.get('failures', 0)}, opened {b.get('opened', 0)} times"
        if str(b.get("state", "")).upper() != "CLOSED" and b.get("retry_at"):
            detail += f", next try in {max(0.0, float(b['retry_at']) - now):.0f} s"
        table.add_row(str(b.get("channel", "?")).lower(), str(b.get("provider", "")), str(b.get("state", "?")), detail)
    console.print(table)


def show_status(settings: Settings) -> int:
    from rich.table import Table

    table = Table(title="Herald", show_lines=False)
    for col in ("part", "state", "address", "version", "detail"):
        table.add_column(col)
    all_up = True
    kafka_up = False
    for name, module in SERVERS:
        try:
            s = module.status()
        except Exception as exc:  # noqa: BLE001 - status must always print something
            s = ServiceStatus(name, False, "", "", {"error": str(exc)})
        all_up &= s.up
        kafka_up |= name == "kafka" and s.up
        detail = {k: v for k, v in s.detail.items() if k not in ("topics", "log", "pid", "managed")}
        if "topics" in s.detail:
            detail["topics"] = len([t for t in s.detail["topics"] if t.startswith(settings.topic_prefix)])
        table.add_row(name, "[green]up[/]" if s.up else "[red]down[/]", s.address, s.version,
                      ", ".join(f"{k}={v}" for k, v in detail.items()))
    if read_pid(prometheus.NAME) is not None:  # only once `herald up --monitoring` started it
        p = prometheus.status(settings)
        table.add_row(p.name, "[green]up[/]" if p.up else "[red]down[/]", p.address, p.version,
                      ", ".join(f"{k}={v}" for k, v in p.detail.items()))
    state = read_state()
    if state.get("alive"):
        table.add_row(SUPERVISOR, "[green]up[/]", "", "", f"pid={state['pid']}, {state['mode']}")
    else:
        table.add_row(SUPERVISOR, "[red]down[/]", "", "", "nothing restarts a process that exits")
        # a dead supervisor's states are stale: up or down is what the pid files say now
        state = {"processes": {name: {**info, "state": "up" if read_pid(name) else "down"}
                               for name, info in state.get("processes", {}).items()}}
        for proc in PROCESSES:
            if proc.name not in state["processes"] and read_pid(proc.name):
                state["processes"][proc.name] = {"state": "up", "pid": read_pid(proc.name)}
    metrics = {entry["pid"]: entry["port"] for entry in served_ports()}
    version = _herald_version()
    for name, label, text in rows(state, [p.name for p in PROCESSES]):
        pid = (state.get("processes", {}).get(name) or {}).get("pid")
        address = f"http://127.0.0.1:{metrics[pid]}/metrics" if pid in metrics else ""
        if name == "api" and pid:
            address = f"http://127.0.0.1:{settings.api_port}/metrics"
        table.add_row(name, label, address, version if pid else "", text)
    console.print(table)
    _show_breakers()
    try:
        lag = consumer_lag(settings) if kafka_up else {}
    except Exception:  # noqa: BLE001
        lag = {}
    if lag:
        lag_table = Table(title="consumer lag", caption="offsets not committed yet; a group that has read all it can "
                          "may show one per partition: the marker of the worker's last transaction")
        lag_table.add_column("group")
        lag_table.add_column("topic")
        lag_table.add_column("lag", justify="right")
        for (group, topic), value in sorted(lag.items()):
            lag_table.add_row(group, topic, str(value))
        console.print(lag_table)
    try:  # topics too weakly replicated for the cluster they are on (herald.topics.weak_topics)
        from herald.topics import replication_warnings

        for warning in replication_warnings(settings) if kafka_up else []:
            console.print(f"[yellow]warning:[/] {warning}")
    except Exception:  # noqa: BLE001 - status must always print something
        pass
    return 0 if all_up else 1


def _herald_version() -> str:
    """The installed Herald's version (the code every process of this checkout runs)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("herald")
    except PackageNotFoundError:
        return ""


def consumer_lag(settings: Settings) -> dict[tuple[str, str], int]:
    """Lag of Herald's consumer groups per topic: end offsets minus committed offsets. On a topic the worker
    writes in transactions (exactly-once) a partition's end may be a commit marker no consumer reads, so a
    group that is caught up can show one per partition: its committed offset stops after the last record."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from herald.kafka import client_config

    admin = AdminClient(client_config(settings))
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=5).result(10).valid
              if g.group_id.startswith(settings.app_id)]
    if not groups:
        return {}
    probe = Consumer({**client_config(settings), "group.id": "herald-status-probe"})
    lag: dict[tuple[str, str], int] = {}
    try:
        for group in groups:
            result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
            for tp in result.topic_partitions:
                if tp.offset < 0 or not tp.topic.startswith(settings.topic_prefix):
                    continue
                high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)[1]
                lag[(group, tp.topic)] = lag.get((group, tp.topic), 0) + max(0, high - tp.offset)
    finally:
        probe.close()
    return lag
