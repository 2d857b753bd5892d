"""A sink's Prometheus metrics: outcomes by channel and status, and its circuit breaker's state.

Label values are bounded (channels, statuses, providers, breaker states): never a user id, address or text.
The breaker's state is read when Prometheus asks, from the breaker itself. Served like the worker's
(``herald.metrics.serve``: ``HERALD_SINK_METRICS_PORT``, 0 a free port, listed by ``herald status``).
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

BREAKER_STATES = ("CLOSED", "HALF_OPEN", "OPEN")


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.outcomes = Counter("herald_sink_outcomes", "Delivery outcomes, by channel and status (DLQ: dead letters)",
                                ["channel", "status"], registry=self.registry)

    def watch_breaker(self, breaker: Any) -> None:
        """Report ``breaker``'s state (1 for the state it is in, 0 for the others) and how often it opened."""
        self.registry.register(_BreakerReading(breaker))


class _BreakerReading:
    def __init__(self, breaker: Any) -> None:
        self.breaker = breaker

    def collect(self) -> Iterator[Any]:
        b = self.breaker.snapshot()
        state = GaugeMetricFamily("herald_sink_breaker_state", "The circuit breaker's state (1: the one it is in)",
                                  labels=["channel", "provider", "state"])
        for name in BREAKER_STATES:
            state.add_metric([b["channel"], b["provider"], name], 1.0 if str(b["state"]).upper() == name else 0.0)
        opened = GaugeMetricFamily("herald_sink_breaker_opened", "Times the circuit opened since the sink started",
                                   labels=["channel", "provider"])
        opened.add_metric([b["channel"], b["provider"]], float(b["opened"]))
        yield from (state, opened)
