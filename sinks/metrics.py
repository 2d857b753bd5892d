"""A sink's Prometheus metrics: outcomes, provider latency, retries waiting, ledger conflicts, the breaker.

Label values are bounded (channels, statuses, providers, breaker states): never a user id, address or text.

- ``herald_sink_outcomes{channel,status}``: delivery outcomes (SENT, RETRYING, DEAD, SUPPRESSED, SKIPPED...).
- ``herald_sink_provider_seconds{channel}``: how long the provider took to answer one send (a timeout counts
  with the time waited); the wait for a free send slot is not in it.
- ``herald_sink_retries_waiting{channel}``: requests waiting in the ledger for their next attempt, counted
  every ``WAITING_EVERY_S`` seconds by ``watch_retries`` (one indexed count: the partial index on RETRYING).
- ``herald_sink_ledger_conflicts{channel,found}``: requests read from Kafka that the ledger already had
  (a replay, a rebalance, a restart), by the status found there; none of them is sent again.
- ``herald_sink_breaker_state{channel,provider,state}`` and ``herald_sink_breaker_opened``: read from the
  breaker itself when Prometheus asks.

Served like the worker's (``herald.metrics.serve``: ``HERALD_SINK_METRICS_PORT``, 0 a free port, listed by
``herald status``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

BREAKER_STATES = ("CLOSED", "HALF_OPEN", "OPEN")
PROVIDER_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAITING_EVERY_S = 5.0
WAITING = ("SELECT count(*) FROM delivery_ledger WHERE channel = $1 AND status = 'RETRYING' "
           "AND (app = $2 OR app IS NULL)")

log = logging.getLogger("herald.sink")


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.outcomes = Counter("herald_sink_outcomes", "Delivery outcomes, by channel and status (DLQ: dead letters)",
                                ["channel", "status"], registry=r)
        self.provider_seconds = Histogram("herald_sink_provider_seconds",
                                          "Seconds the provider took to answer one send, by channel",
                                          ["channel"], buckets=PROVIDER_SECONDS, registry=r)
        self.retries_waiting = Gauge("herald_sink_retries_waiting",
                                     "Requests waiting in the ledger for their next attempt, by channel",
                                     ["channel"], registry=r)
        self.ledger_conflicts = Counter("herald_sink_ledger_conflicts",
                                        "Requests the ledger already had (not sent again), by channel and the "
                                        "status found there", ["channel", "found"], registry=r)

    def watch_breaker(self, breaker: Any) -> None:
        """Report ``breaker``'s state (1 for the state it is in, 0 for the others) and how often it opened."""
        self.registry.register(_BreakerReading(breaker))

    async def watch_retries(self, pool: Any, channel: str, app: str, every_s: float = WAITING_EVERY_S) -> None:
        """Count ``channel``'s requests of deployment ``app`` waiting for a retry in the ledger every ``every_s`` seconds, until
        cancelled. A failed count (the database away) leaves the last value and is tried again."""
        gauge = self.retries_waiting.labels(channel)
        while True:
            try:
                async with pool.acquire() as conn:
                    gauge.set(await conn.fetchval(WAITING, channel, app))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a metric must never stop the sink
                log.debug("sink %s: retries waiting not counted (%s)", channel, type(exc).__name__)
            await asyncio.sleep(every_s)


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
