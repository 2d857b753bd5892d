"""The sink's breaker as Prometheus reads it: one gauge per state, 1 for the state it is in."""
from __future__ import annotations

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
