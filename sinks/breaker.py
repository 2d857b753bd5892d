"""A circuit breaker per channel and provider: after repeated failures, requests wait instead of hammering.

- CLOSED: every send goes through; ``failures`` consecutive retryable failures (429, 5xx, timeouts) open it.
  A success, or a permanent refusal (the provider answered: it is up), resets the count.
- OPEN: nothing is sent; ``allow()`` is False and ``retry_at`` says when to ask again. After ``open_s`` it
  becomes HALF_OPEN.
- HALF_OPEN: exactly one probe is let through; its success closes the circuit, its failure opens it again
  for another ``open_s``. While the probe is in flight the others wait as if open.

The state is written, on every change, to a small JSON file (``state_path``) that ``herald status`` reads:
``{"channel", "provider", "state", "since", "retry_at", "failures", "opened", "pid"}``. Times are Unix seconds.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"


class Breaker:
    def __init__(self, channel: str, provider: str, failures: int = 5, open_s: float = 10.0,
                 state_path: Path | None = None, clock=time.time) -> None:
        self.channel = channel
        self.provider = provider
        self.threshold = max(failures, 1)
        self.open_s = open_s
        self.state_path = state_path
        self.clock = clock
        self.state = CLOSED
        self.since = clock()
        self.failures = 0
        self.opened = 0            # how many times it opened, for the state file
        self._open_until = 0.0
        self._probe = False
        self._write()

    @property
    def retry_at(self) -> float:
        """When an open circuit lets a probe through (now when closed)."""
        return self._open_until if self.state != CLOSED else self.clock()

    def allow(self) -> bool:
        """May one send go now? In HALF_OPEN, True once, for the probe."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() >= self._open_until:
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN and not self._probe:
            self._probe = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._probe = False
        if self.state != CLOSED:
            self._set(CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self._probe = False
            self._open_until = self.clock() + self.open_s
            self.opened += 1
            self._set(OPEN)

    def snapshot(self) -> dict:
        return {"channel": self.channel, "provider": self.provider, "state": self.state, "since": self.since,
                "retry_at": self.retry_at, "failures": self.failures, "opened": self.opened, "pid": os.getpid()}

    def _set(self, state: str) -> None:
        self.state = state
        self.since = self.clock()
        self._write()

    def _write(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot()))
            os.replace(tmp, self.state_path)
        except OSError:  # the state file is informative only; a full disk must not stop deliveries
            pass


def read_states(run_dir: Path) -> list[dict]:
    """Every channel's last written breaker state in ``run_dir`` (``herald.paths.subdir("run")``), for
    ``herald status``: one dict per ``breaker-<channel>.json``, sorted by channel; unreadable files skipped."""
    states = []
    for path in sorted(Path(run_dir).glob("breaker-*.json")):
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return states
