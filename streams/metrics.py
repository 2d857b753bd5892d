"""The worker's Prometheus metrics, served on ``/metrics`` of its own port.

Label values are bounded (partitions, outcomes, channels, reasons): never a user id, address or text.
Counts are gathered per batch and added once at its end, so the hot path pays a dict update per record,
not a metric call. What is cheap to read when Prometheus asks (lag, users due, the size of the RocksDB
files, the restore progress) is read then, by a collector, rather than kept up to date on every record.
``herald_worker_rocksdb_bytes`` is the worker's state on disk.

The port is ``HERALD_WORKER_METRICS_PORT``; 0 picks a free one. Either way the port in use is written to
``run/metrics/<app id>-<pid>.json`` in the state folder, where ``herald status`` finds it, and removed at exit.
"""
from __future__ import annotations

from collections import Counter as Tally
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from herald.metrics import serve

BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
BATCH_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# fine between 50 ms and 1 s, where a CRITICAL event's tail lies on a busy machine: the bench reads its p99 from them
WAIT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5,
                5, 10)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("herald_worker_events", "Event records read, by partition", ["partition"], registry=r)
        self.decisions = Counter("herald_worker_decisions", "Decisions written, by outcome and whether final",
                                 ["outcome", "final"], registry=r)
        self.requests = Counter("herald_worker_delivery_requests", "Delivery requests written, by channel and kind",
                                ["channel", "kind"], registry=r)
        self.dead_letters = Counter("herald_worker_dead_letters", "Records dead-lettered, by reason and stage",
                                    ["reason", "stage"], registry=r)
        self.released = Counter("herald_worker_released_users", "Users the clock released", registry=r)
        self.expressed = Counter("herald_worker_expressed_requests",
                                 "CRITICAL delivery requests sent at once, outside their batch's transaction",
                                 registry=r)
        # one observation per CRITICAL event decided ahead (a few in a hundred events), not per record
        self.critical_wait = Histogram(
            "herald_worker_critical_wait_seconds",
            "Seconds from the CRITICAL lane's reader reading a CRITICAL event to its delivery requests being queued "
            "to the broker, for the events the lane decided ahead (the worker's own share of their latency)",
            buckets=WAIT_SECONDS, registry=r)
        self.rebalances = Counter("herald_worker_rebalances", "Partition assignments and revocations seen", registry=r)
        self.batch_records = Histogram("herald_worker_batch_records", "Records per batch", buckets=BATCH_SIZES, registry=r)
        self.batch_seconds = Histogram("herald_worker_batch_seconds", "Seconds to decide and commit a batch",
                                       buckets=BATCH_SECONDS, registry=r)

    def batch(self, records: int, seconds: float, events: Tally, decisions: Tally, requests: Tally, released: int,
              expressed: int = 0) -> None:
        """Add one batch's counts (``events`` by partition, ``decisions`` by (outcome, final), ``requests`` by
        (channel, kind))."""
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        for partition, n in events.items():
            self.events.labels(str(partition)).inc(n)
        for (outcome, final), n in decisions.items():
            self.decisions.labels(outcome, "true" if final else "false").inc(n)
        for (channel, kind), n in requests.items():
            self.requests.labels(channel, kind).inc(n)
        if released:
            self.released.inc(released)
        if expressed:
            self.expressed.inc(expressed)

    def watch(self, lag: Callable[[], dict[int, int]], due: Callable[[], dict[int, int]], data_dir: Path) -> None:
        """Read these when scraped: unread events and users due per partition, and the RocksDB files' size."""
        self.registry.register(_Readings(lag, due, data_dir))

    def watch_recovery(self, recovery: Callable[[], Any]) -> None:
        """Read the restore progress when scraped from ``recovery()`` (Faust's ``app.tables.recovery``):
        whether the worker is restoring its tables now, and the changelog records its active partitions
        have still to read (0 once they are up to date; a worker that never restored reports 0)."""
        self.registry.register(_Recovery(recovery))

    def serve(self, port: int, app_id: str) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: a free one) and note the port for ``herald status``."""
        return serve(self.registry, port, "worker", app_id)


class _Readings:
    def __init__(self, lag: Callable[[], dict[int, int]], due: Callable[[], dict[int, int]], data_dir: Path) -> None:
        self.lag, self.due, self.data_dir = lag, due, data_dir

    def collect(self) -> Iterator[Any]:
        lag = GaugeMetricFamily("herald_worker_unread_events", "Events on a held partition not read yet",
                                labels=["partition"])
        for partition, n in sorted(self.lag().items()):
            lag.add_metric([str(partition)], n)
        due = GaugeMetricFamily("herald_worker_due_users", "Users indexed for a later release", labels=["partition"])
        for partition, n in sorted(self.due().items()):
            due.add_metric([str(partition)], n)
        size = GaugeMetricFamily("herald_worker_rocksdb_bytes", "Size of the worker's RocksDB files")
        size.add_metric([], sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file()))
        yield from (lag, due, size)


class _Recovery:
    def __init__(self, recovery: Callable[[], Any]) -> None:
        self.recovery = recovery

    def collect(self) -> Iterator[Any]:
        restoring = GaugeMetricFamily("herald_worker_restoring", "1 while the worker restores its tables from "
                                      "their changelogs (a partition taken over), else 0")
        left = GaugeMetricFamily("herald_worker_restore_remaining",
                                 "Changelog records the worker's active partitions have still to restore")
        try:
            r = self.recovery()
            now, remaining = (1.0 if getattr(r, "in_recovery", False) else 0.0), float(r.active_remaining_total())
        except Exception:  # noqa: BLE001 - before the worker starts or its first assignment there is nothing to count
            now, remaining = 0.0, 0.0
        restoring.add_metric([], now)
        left.add_metric([], remaining)
        yield from (restoring, left)
