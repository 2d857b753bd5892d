"""The sink's breaker as Prometheus reads it: one gauge per state, 1 for the state it is in."""
from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from sinks.breaker import Breaker
from sinks.metrics import SinkMetrics


def test_the_breaker_state_is_read_when_scraped():
    now = [1000.0]
    breaker = Breaker("EMAIL", "smtp", failures=2, open_s=10, clock=lambda: now[0])
    metrics = SinkMetrics()
    metrics.watch_breaker(breaker)

    def state() -> dict[str, float]:
        out = {}
        for line in generate_latest(metrics.registry).decode().splitlines():
            if line.startswith("herald_sink_breaker_state{"):
                out[line.split('state="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        return out

    assert state() == {"CLOSED": 1.0, "HALF_OPEN": 0.0, "OPEN": 0.0}
    breaker.failure()
    breaker.failure()
    assert state() == {"CLOSED": 0.0, "HALF_OPEN": 0.0, "OPEN": 1.0}
    assert 'herald_sink_breaker_opened{channel="EMAIL",provider="smtp"} 1.0' in generate_latest(metrics.registry).decode()
    now[0] += 11
    assert breaker.allow()  # the probe
    assert state()["HALF_OPEN"] == 1.0


def _samples(registry) -> dict[tuple[str, tuple], float]:
    """Every sample of ``registry`` as {(name, sorted labels): value}."""
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_restore_progress_is_read_when_scraped():
    from types import SimpleNamespace

    from streams.metrics import WorkerMetrics

    recovery = SimpleNamespace(in_recovery=True, active_remaining_total=lambda: 1234)
    metrics = WorkerMetrics()
    metrics.watch_recovery(lambda: recovery)
    got = _samples(metrics.registry)
    assert got[("herald_worker_restoring", ())] == 1.0
    assert got[("herald_worker_restore_remaining", ())] == 1234.0
    recovery.in_recovery, recovery.active_remaining_total = False, lambda: 0
    got = _samples(metrics.registry)
    assert got[("herald_worker_restoring", ())] == 0.0 and got[("herald_worker_restore_remaining", ())] == 0.0
    broken = WorkerMetrics()
    broken.watch_recovery(lambda: None)  # the worker not started yet: nothing to read, and the scrape still works
    got = _samples(broken.registry)
    assert got[("herald_worker_restoring", ())] == 0.0 and got[("herald_worker_restore_remaining", ())] == 0.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from tests.sinks.helpers import Server

    logdir = tmp_path_factory.mktemp("servers")
    catcher = Server("infra.mailcatcher", logdir)
    yield catcher
    catcher.stop()


@pytest.mark.integration
async def test_an_email_sink_counts_latency_retries_waiting_and_ledger_conflicts_and_logs_no_address(
        pool, unique, servers, tmp_path, caplog):
    """The email sink against the real broker, database and mail catcher: a sent email and a deferred one
    (451: waiting for its retry), then a second consumer group reading the same requests (a replay) finds
    them in the ledger. The metrics say so; nothing in the logs names an address, a body or a title."""
    import asyncio
    import logging

    from sinks import runtime
    from tests.sinks.helpers import Kafka, request, running, settings_for, wait_for

    caplog.set_level(logging.DEBUG)
    settings = settings_for(unique, smtp_url=f"smtp://127.0.0.1:{servers.port}", sink_retry_base_s=60,
                            sink_retry_max_s=120)
    kafka = Kafka(settings)
    ok_user, later_user = f"{unique}-ok", f"{unique}-later"
    ok_rcpt, later_rcpt = f"{unique}@example.test", f"defer-{unique}@example.test"
    kafka.contact(ok_user, email=ok_rcpt)
    kafka.contact(later_user, email=later_rcpt)
    secret_title, secret_body = f"Title-{unique}", f"Body-{unique}"
    reqs = [request(ok_user, "EMAIL", title=secret_title, body=secret_body),
            request(later_user, "EMAIL", title=secret_title, body=secret_body)]
    kafka.send("EMAIL", reqs)

    def sink(s):
        runner = runtime.build(s, "EMAIL", pool, breaker=Breaker("EMAIL", "smtp", 50, 1.0, tmp_path / "b.json"),
                               retry_poll_s=0.1)
        runner.metrics = SinkMetrics()
        runner.metrics.watch_breaker(runner.breaker)
        return runner

    first = sink(settings)
    waiting = asyncio.ensure_future(first.metrics.watch_retries(pool, "EMAIL", settings.app_id, every_s=0.2))
    try:
        async with running(first):
            await wait_for(lambda: {s["status"] for s in kafka.statuses()} >= {"SENT", "RETRYING"}, 60)
            await wait_for(lambda: _samples(first.metrics.registry).get(
                ("herald_sink_retries_waiting", (("channel", "EMAIL"),))) == 1.0, 20)
    finally:
        waiting.cancel()
    got = _samples(first.metrics.registry)
    assert got[("herald_sink_provider_seconds_count", (("channel", "EMAIL"),))] == 2.0  # one answer each
    assert got[("herald_sink_outcomes_total", (("channel", "EMAIL"), ("status", "SENT")))] == 1.0
    assert got[("herald_sink_outcomes_total", (("channel", "EMAIL"), ("status", "RETRYING")))] == 1.0
    assert not [k for k in got if k[0] == "herald_sink_ledger_conflicts_total"]

    replay = sink(settings_for(unique, smtp_url=f"smtp://127.0.0.1:{servers.port}", app_id=f"{unique}-replay",
                               sink_retry_base_s=60, sink_retry_max_s=120))
    async with running(replay):
        await wait_for(lambda: sum(v for k, v in _samples(replay.metrics.registry).items()
                                   if k[0] == "herald_sink_ledger_conflicts_total") >= 2, 30)
    got = _samples(replay.metrics.registry)
    assert got[("herald_sink_ledger_conflicts_total", (("channel", "EMAIL"), ("found", "SENT")))] == 1.0
    assert got[("herald_sink_ledger_conflicts_total", (("channel", "EMAIL"), ("found", "RETRYING")))] == 1.0
    assert got.get(("herald_sink_provider_seconds_count", (("channel", "EMAIL"),)), 0.0) == 0.0  # nothing sent again

    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    assert "sink EMAIL consuming" in text  # the log was captured
    for secret in (ok_rcpt, later_rcpt, secret_title, secret_body, "example.test"):
        assert secret not in text, f"{secret!r} is in the sink's log"
    labels = " ".join(str(k[1]) for k in got)
    assert unique not in labels
