"""The performance targets ``herald bench`` judges a run by: one table, the project's own.

Each target names a figure of the results (``figures[figure]``), the value it must reach, how it is
compared (``>=`` at least, ``<=`` at most), its unit and what it means. ``shown`` is the text
BENCHMARKS.md puts in its Target column. ``bench/report.py`` turns each into a verdict (a few also need
the run to be at the target's scale: see ``comparable``), and ``docs/reference.md`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    figure: str
    value: float
    comparison: str  # ">=" or "<="
    unit: str
    means: str
    shown: str

    def met(self, measured: float) -> bool:
        """Whether ``measured`` reaches the target (``>=``: at least ``value``; ``<=``: at most)."""
        if self.comparison == ">=":
            return measured >= self.value
        if self.comparison == "<=":
            return measured <= self.value
        raise ValueError(f"target {self.figure}: comparison {self.comparison!r} is neither '>=' nor '<='")


DIGEST_USERS = 1_000_000
DIGEST_S = 60.0
UNREAD_RATE = 5_000  # requests/s at which the unread-count latency target applies

TARGETS: tuple[Target, ...] = (
    Target("pipeline_events_per_s", 20_000, ">=", "events/s",
           "events the full stateful pipeline decides per second at steady state", "≥ 20,000 events/s"),
    Target("pipeline_vs_quix_ratio", 1.0, ">=", "×",
           "Herald's rate over the same logic written with Quix Streams, on the same events", "≥ 1 (at least the peer)"),
    Target("critical_p99_ms", 50.0, "<=", "ms",
           "a CRITICAL event from produce to its delivery topic, 99th percentile, with the stream at half "
           "Herald's measured rate (after the stream's first 5 s, its warm-up)", "≤ 50 ms at half load"),
    Target("digest_users", DIGEST_USERS, ">=", "users",
           "users with a digest due at the same period's end", "1,000,000"),
    Target("digest_s", DIGEST_S, "<=", "s",
           "from the period's end to the last digest request emitted, for a million users", "≤ 60 s for 1,000,000 users"),
    Target("digests_per_s", DIGEST_USERS / DIGEST_S, ">=", "digests/s",
           "digests emitted per second, the same target as a rate (judged at any scale)",
           "≥ 16,667/s (1,000,000 in 60 s)"),
    Target("unread_p99_ms", 5.0, "<=", "ms",
           "the unread-count API's 99th-percentile latency under 5,000 requests/s", "≤ 5 ms at 5,000 req/s"),
    Target("worker_rss_mb", 400.0, "<=", "MB",
           "resident memory of the workers holding a million users' state, all of them together",
           "≤ 400 MB for 1,000,000 users"),
    Target("recovery_s", 15.0, "<=", "s",
           "from kill -9 of the worker mid-stream to the next decision by a new one", "≤ 15 s"),
)

BY_FIGURE: dict[str, Target] = {t.figure: t for t in TARGETS}
