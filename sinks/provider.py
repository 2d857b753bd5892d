"""What every channel's provider is: one small class that sends one rendered message to one recipient.

A provider answers a send in one of three ways, and the runtime (``sinks/runner.py``) does the rest:

- it returns ``Sent``: the provider accepted the message (SENT);
- it raises ``TransientError``: 429, 5xx, a timeout or a dropped connection; worth another attempt later,
  after ``retry_after`` seconds when the provider said so (RETRYING, or DEAD after the last attempt);
- it raises ``PermanentError``: the provider refused this message for good (4xx other than 429, an invalid
  address, an answer that cannot be read): FAILED, then DEAD at once, never retried.

A provider that fans one request out to several targets (push: one message per device token) reports the
targets already served in ``done`` on both ``Sent`` and ``TransientError``; the runtime keeps them in the
ledger so a retry serves only the rest. ``unregistered`` lists targets the provider says no longer exist
(FCM ``UNREGISTERED``); the runtime removes them from the user's contact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sent:
    ref: str | None = None                 # the provider's message id, when it gives one
    done: set[str] = field(default_factory=set)
    unregistered: list[str] = field(default_factory=list)
    note: str | None = None                # e.g. some targets refused while others were served


class TransientError(Exception):
    """Worth retrying later."""

    def __init__(self, message: str, retry_after: float | None = None, done: set[str] | None = None,
                 unregistered: list[str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.done = done or set()
        self.unregistered = unregistered or []


class PermanentError(Exception):
    """Never worth retrying. ``reason`` is a stable code: INVALID_ADDRESS, REJECTED, BAD_RESPONSE, TEMPLATE…"""

    def __init__(self, reason: str, message: str, unregistered: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.unregistered = unregistered or []


class Provider:
    """One channel's way out. Subclasses set ``channel`` and ``name`` and implement the three methods."""

    channel: str = ""
    name: str = ""

    async def start(self) -> None:
        """Open connections or sessions; called once before the first send."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    def recipient(self, contact: dict | None) -> Any:
        """Where this channel reaches the contact's user, or None when it has no address here (SUPPRESSED).
        Raises ``PermanentError('INVALID_ADDRESS', ...)`` for an address the channel cannot use."""
        raise NotImplementedError

    async def send(self, request: dict, rendered: dict[str, str], to: Any, done: set[str]) -> Sent:
        """Send ``rendered`` (the template's parts) for ``request`` to ``to``; ``done`` lists targets already
        served by an earlier attempt."""
        raise NotImplementedError
