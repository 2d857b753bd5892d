"""The contract's enumerations, defined once, and the one ranking of priorities.

``PRIORITIES`` runs from the most urgent to the least. ``urgency`` gives a larger number to a more urgent
priority, so ``max(priorities, key=urgency)`` is the most urgent of several and ``urgency(a) >= urgency(b)``
reads "a is at least as urgent as b". An unknown priority raises ``KeyError``: it would be a validation bug.
"""
from __future__ import annotations

from typing import Iterable

CHANNELS = ("EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET")
PRIORITIES = ("CRITICAL", "HIGH", "NORMAL", "LOW")
KINDS = ("SINGLE", "BATCH", "DIGEST")
OUTCOMES = ("ROUTED", "DEDUPLICATED", "SUPPRESSED_PREFERENCE", "DEFERRED_QUIET_HOURS", "THROTTLED", "BATCHED",
            "DIGESTED", "SCHEDULED", "CANCELLED")
STATUSES = ("SENT", "FAILED", "RETRYING", "DEAD", "SUPPRESSED")
DIGEST_MODES = ("IMMEDIATE", "HOURLY", "DAILY", "WEEKLY")
READ_ACTIONS = ("READ", "SEEN", "ARCHIVED", "READ_ALL")

_URGENCY = {p: len(PRIORITIES) - i for i, p in enumerate(PRIORITIES)}  # CRITICAL 4 ... LOW 1


def urgency(priority: str) -> int:
    """How urgent ``priority`` is: CRITICAL highest, LOW lowest."""
    return _URGENCY[priority]


def most_urgent(priorities: Iterable[str]) -> str:
    """The most urgent of ``priorities`` (which must not be empty)."""
    return max(priorities, key=urgency)
