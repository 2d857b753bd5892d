"""The bench's reading of the workers' histograms: parsed from a real ``/metrics`` page, summed, differenced."""
from __future__ import annotations

import math

from prometheus_client import generate_latest

from bench.worker_metrics import difference, histogram_buckets, percentile_at_most
from streams.metrics import WorkerMetrics

NAME = "herald_worker_critical_wait_seconds"


def page(*waits: float) -> str:
    metrics = WorkerMetrics()
    for wait in waits:
        metrics.critical_wait.observe(wait)
    return generate_latest(metrics.registry).decode()


def test_the_buckets_are_read_from_the_workers_page():
    buckets = histogram_buckets(page(0.003, 0.02, 0.02, 7.0), NAME)
    assert buckets[0.0025] == 0 and buckets[0.005] == 1 and buckets[0.025] == 3 and buckets[math.inf] == 4
    assert set(histogram_buckets(page(0.003), "herald_worker_batch_seconds").values()) == {0.0}  # another one
    assert histogram_buckets("", NAME) == {}


def test_a_percentile_is_the_bound_it_falls_under_and_none_past_the_last():
    before = histogram_buckets(page(0.2, 0.2), NAME)  # observed before the timed part: not counted
    after = histogram_buckets(page(0.2, 0.2, *[0.004] * 98, 0.04, 20.0), NAME)
    timed = difference(before, after)
    assert timed[math.inf] == 100
    assert percentile_at_most(timed, 50) == 0.005
    assert percentile_at_most(timed, 99) == 0.05
    assert percentile_at_most(timed, 100) is None  # 20 s is past the last bound (10 s)
    assert percentile_at_most(difference(after, after), 99) is None  # nothing observed


def test_a_tail_between_50_ms_and_a_second_is_told_within_100_ms():
    for tail, bound in ((0.07, 0.075), (0.12, 0.15), (0.26, 0.3), (0.33, 0.4), (0.45, 0.5), (0.6, 0.75)):
        timed = histogram_buckets(page(*[0.004] * 97, *[tail] * 3), NAME)
        assert percentile_at_most(timed, 99) == bound
