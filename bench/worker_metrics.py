"""Reading a histogram the bench's workers serve on ``/metrics``, summed over them, between two readings.

The latency phase reads ``herald_worker_critical_wait_seconds`` (``streams.metrics``) when its timed part
starts and once its CRITICAL events have arrived: the difference is the worker's own share of their
latency, from the lane's reader reading each event to its delivery requests being queued. A histogram
gives bucket bounds, not exact percentiles: ``percentile_at_most`` says which bound the percentile is
under (None when it is past the last bound or nothing was observed).
"""
from __future__ import annotations

import math
import urllib.request
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

from herald.metrics import served_ports


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """The cumulative counts by upper bound of histogram ``name`` in a ``/metrics`` page ({} if absent)."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def read_buckets(pids: Iterable[int], name: str, timeout: float = 5) -> dict[float, float]:
    """Histogram ``name`` summed over the processes ``pids`` that serve metrics (noted in the state folder);
    one that cannot be read counts nothing."""
    wanted = set(pids)
    total: dict[float, float] = {}
    for entry in served_ports():
        if entry.get("pid") not in wanted:
            continue
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{entry['port']}/metrics", timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue
        for bound, count in histogram_buckets(text, name).items():
            total[bound] = total.get(bound, 0.0) + count
    return total


def difference(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """What was observed between two readings (a bound missing before counted nothing then)."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def percentile_at_most(buckets: dict[float, float], q: float) -> float | None:
    """The smallest bucket bound at or under which ``q`` percent of the observations fall (None: none observed,
    or the percentile is past the last finite bound)."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= total * q / 100:
            return None if math.isinf(bound) else bound
    return None
