"""What the pipeline wrote, read back from its topics while the run goes on.

The soak's checker (decisions, dead letters, delivery requests) plus the delivery statuses, the details the
chaos invariants need (each final decision's channels, each request's channel and events) and, for the
recovery times, when the latest decision and the latest SENT status of each channel arrived.
"""
from __future__ import annotations

import bisect
import time
from collections import defaultdict

from bench.soak import Checker
from herald.settings import Settings
from schemas.codec import Codec

TERMINAL = ("SENT", "DEAD", "SUPPRESSED")


class Tap(Checker):
    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.status_topic = settings.topic("delivery.status")
        self.final_decisions: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)  # event -> (outcome, channels)
        self.request_of: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # delivery_id -> (channel, kind, event_ids)
        self.statuses: dict[str, list[tuple[str, str | None]]] = defaultdict(list)  # delivery_id -> [(status, error)]
        self.decision_log: dict[str, list[str]] = defaultdict(list)  # event -> every decision, for the report
        self.decision_times: list[float] = []  # arrival (monotonic) of each decision record
        self.sent_times: dict[str, list[float]] = defaultdict(list)  # channel -> arrival of each SENT
        self.request_read_at: dict[str, float] = {}  # delivery_id -> when (monotonic) its request was first read
        super().__init__(settings, codec, extra_topics=(self.status_topic,))

    error: str | None = None  # why the tap stopped reading, if it did: the run's checks are then void

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - recorded and reported as a violation
            self.error = repr(exc)
            raise

    def add(self, msg) -> None:  # noqa: ANN001
        super().add(msg)
        topic = msg.topic()
        if topic == self.decisions_topic:
            d = self.codec.decode(msg.value(), "Decision")
            self.decision_times.append(time.monotonic())
            self.decision_log[d["event_id"]].append(f"{d['outcome']}{'' if d['final'] else '(interim)'}@{msg.partition()}:"
                                                    f"{msg.offset()} {d['reason'][:70]}")
            if d["final"]:
                self.final_decisions[d["event_id"]].append((d["outcome"], tuple(d["channels"] or ())))
            elif d["outcome"] == "THROTTLED":  # waiting for the user's rate limit (an hour's, maybe): legitimately
                self.held.add(d["event_id"])
        elif topic != self.dlq_topic and topic not in self.extra_topics:
            r = self.codec.decode(msg.value(), "DeliveryRequest")
            self.request_of[r["delivery_id"]] = (r["channel"], r["kind"], tuple(r["event_ids"] or ()))
            self.request_read_at.setdefault(r["delivery_id"], time.monotonic())

    def other(self, msg) -> None:  # noqa: ANN001
        s = self.codec.decode(msg.value(), "DeliveryStatus")
        self.statuses[s["delivery_id"]].append((s["status"], s["error"]))
        if s["status"] == "SENT":
            self.sent_times[s["channel"]].append(time.monotonic())

    def freeze(self, timeout_s: float = 30.0) -> None:
        """Stop reading and wait until the thread has: the checks then read what the tap holds, not dicts it is
        still adding to (a status arriving during the check once broke it: "dictionary changed size")."""
        self.close()
        self.join(timeout_s)
        if self.is_alive():
            raise RuntimeError(f"the tap did not stop reading within {timeout_s:g} s")

    def unsettled(self) -> int:
        """Delivery requests with no terminal status yet."""
        return sum(1 for d in list(self.request_of) if not any(st in TERMINAL for st, _ in self.statuses.get(d, ())))

    @staticmethod
    def first_after(times: list[float], t: float) -> float | None:
        """The first arrival at or after ``t`` (the list is in arrival order)."""
        i = bisect.bisect_left(times, t)
        return times[i] if i < len(times) else None
