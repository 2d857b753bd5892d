"""``herald up``, ``down`` and ``status``: the local stack as processes, started in dependency order.

Servers first (PostgreSQL, Kafka, then the registry, which keeps its schemas in Kafka), then the
topics and schemas, then Herald's own processes (worker, in-app sink, API) and the demo producer.
Every process logs to ``.herald/logs/<name>.log``; ``down`` stops them in reverse order.
"""
from __future__ import annotations

import os
import sys
import time
import urllib.request
from typing import Callable

from rich.console import Console

from infra import kafka, postgres, registry
from infra.common import InfraError, REPO_ROOT, ServiceStatus, log_path, read_pid, start_process, stop_process, wait_until
from herald.settings import Settings

console = Console(stderr=True, highlight=False)
SERVERS = (("postgres", postgres), ("kafka", kafka), ("registry", registry))
PROCESSES = ("worker", "sink-inapp", "api")
DEMO_WINDOWS = {"HERALD_BATCH_WINDOW_S": "10", "HERALD_DIGEST_PERIOD_S": "60"}


def _say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def _herald(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def _ready_by_log(name: str, marker: str) -> Callable[[], bool]:
    def check() -> bool:
        path = log_path(name)
        return path.exists() and marker in path.read_text(errors="replace")[-200_000:]
    return check


def _api_ready(settings: Settings) -> Callable[[], bool]:
    def check() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.api_port}/readyz", timeout=1) as r:
            return r.status == 200
    return check


def start_servers(settings: Settings) -> dict[str, ServiceStatus]:
    started = {}
    for name, module in SERVERS:
        t0 = time.monotonic()
        status = module.start(progress=_say)
        started[name] = status
        _say(f"[green]✓[/] {name} ready on {status.address} ({time.monotonic() - t0:.1f}s)")
    return started


def start_pipeline(settings: Settings, demo: bool, rate: float | None) -> None:
    from herald.topics import ensure_topics, register_schemas

    topics = ensure_topics(settings)
    ids = register_schemas(settings)
    _say(f"[green]✓[/] {len(topics)} topics, {len(ids)} schemas registered (BACKWARD_TRANSITIVE)")
    checks = {"worker": _ready_by_log("worker", "Ready"), "sink-inapp": _ready_by_log("sink-inapp", "consuming"),
              "api": _api_ready(settings)}
    argv = {"worker": _herald("worker"), "sink-inapp": _herald("sink", "inapp"), "api": _herald("api")}
    # the demo runs short windows, so batches and digests go out while you watch (unless you chose yours)
    env = {k: v for k, v in DEMO_WINDOWS.items() if demo and not os.environ.get(k)}
    procs = {}
    for name in PROCESSES:
        if read_pid(name) is None:
            log_path(name).write_text("")
            procs[name] = start_process(name, argv[name], env=env, cwd=REPO_ROOT)
    for name in PROCESSES:
        t0 = time.monotonic()
        wait_until(checks[name], 90, f"{name}", log_path(name), procs.get(name))
        _say(f"[green]✓[/] {name} ready ({time.monotonic() - t0:.1f}s, log: {log_path(name)})")
    if demo and read_pid("demo") is None:
        start_process("demo", _herald("produce", "--demo", "--quiet", "--rate", str(rate or settings.demo_rate)),
                      cwd=REPO_ROOT)
        _say(f"[green]✓[/] demo producer: {rate or settings.demo_rate:g} events/s to {settings.topic('events')}")


def up(settings: Settings, detach: bool, demo: bool, rate: float | None) -> int:
    t0 = time.monotonic()
    try:
        start_servers(settings)
        start_pipeline(settings, demo, rate)
    except InfraError as exc:
        console.print(f"[red]✗ {exc}[/]")
        if not detach:
            down()
        return 1
    _say(f"[bold]Herald is up[/] in {time.monotonic() - t0:.1f}s")
    _where(settings)
    if detach:
        _say("running in the background; `herald down` stops it")
        return 0
    from streams.dashboard import watch

    try:
        watch(settings)
    except KeyboardInterrupt:
        pass
    finally:
        console.print()
        down()
    return 0


def _where(settings: Settings) -> None:
    from api import auth

    from streams.demo import SAMPLE_USER

    token = auth.mint(auth.signing_secret(settings), SAMPLE_USER)
    base = f"http://127.0.0.1:{settings.api_port}"
    console.print(f"""
  API            {base}/v1/users/{SAMPLE_USER}/unread-count   (header: Authorization: Bearer <token>)
  token          herald token {SAMPLE_USER}     (one for the sample user: {token[:24]}…)
  try            curl -s -H "Authorization: Bearer $(herald token {SAMPLE_USER})" {base}/v1/users/{SAMPLE_USER}/notifications?limit=3
  decisions      herald tail {settings.topic('decisions')}
  dead letters   herald tail {settings.topic('dlq')} --from-beginning
  metrics        {base}/metrics        logs  {log_path('worker').parent}/
""")


def down() -> None:
    for name in ("demo", *reversed(PROCESSES)):
        if stop_process(name, timeout=20):
            _say(f"stopped {name}")
    for name, module in reversed(SERVERS):
        if module.stop():
            _say(f"stopped {name}")


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
    for name in (*PROCESSES, "demo"):
        pid = read_pid(name)
        table.add_row(name, "[green]up[/]" if pid else "[red]down[/]", "", "", f"pid={pid}" if pid else "")
    console.print(table)
    try:
        lag = consumer_lag(settings) if kafka_up else {}
    except Exception:  # noqa: BLE001
        lag = {}
    if lag:
        lag_table = Table(title="consumer lag")
        lag_table.add_column("group")
        lag_table.add_column("topic")
        lag_table.add_column("lag", justify="right")
        for (group, topic), value in sorted(lag.items()):
            lag_table.add_row(group, topic, str(value))
        console.print(lag_table)
    return 0 if all_up else 1


def consumer_lag(settings: Settings) -> dict[tuple[str, str], int]:
    """Lag of Herald's consumer groups per topic: end offsets minus committed offsets."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=5).result(10).valid
              if g.group_id.startswith(settings.app_id)]
    if not groups:
        return {}
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "herald-status-probe"})
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
