"""The promises a chaos run checks, as pure functions over what it collected from the records.

1. **Accounted**: each accepted (acknowledged) valid input record has one final decision, or its event is
   still legitimately waiting (an interim SCHEDULED, DEFERRED_QUIET_HOURS or THROTTLED decision and no
   final one);
   each accepted bad record is one dead letter (a record dead-lettered again after being read again counts
   once: its source partition and offset are the same).
2. **Once at the provider**: no delivery_id reached the SMTP server, the push or the SMS provider twice
   (email by its Message-ID, derived from the delivery_id; push by its data; SMS by its status callback);
   and every delivery the sinks reported SENT is there (a SENT the provider never got is a loss).
3. **Attempted**: every final ROUTED, BATCHED or DIGESTED decision has a delivery request on each of its
   channels, and every delivery request ended SENT, SUPPRESSED, or DEAD with a reason.
4. **Inbox counts**: each user's unread and unseen counters equal a recount of their inbox rows, and every
   in-app delivery reported SENT is a row.
5. **Recovery**: after each fault ends, work resumes within ``RECOVERY_LIMIT_S``.

Each check returns the violations it found: which invariant, a sentence, and the records that break it (ids,
never contents), at most ``EXAMPLES`` of them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

RECOVERY_LIMIT_S = 30.0
EXAMPLES = 20
DELIVERING = ("ROUTED", "BATCHED", "DIGESTED")
TERMINAL = ("SENT", "DEAD", "SUPPRESSED")


@dataclass
class Violation:
    invariant: str
    message: str
    records: list[str] = field(default_factory=list)


def _v(invariant: str, message: str, records) -> list[Violation]:  # noqa: ANN001
    records = sorted(map(str, records))
    return [Violation(invariant, f"{message} ({len(records)})", records[:EXAMPLES])] if records else []


DECIDED_AGAIN = "events decided again identically: a batch's outputs written twice after a worker restart"


def accounted(accepted: Counter, finals_of: Counter, still_held: set[str], bad_accepted: int,
              dead_letters: int, finals: dict[str, list] | None = None) -> list[Violation]:
    """Invariant 1. ``finals_of``: event_id -> final decisions; ``dead_letters``: distinct source records;
    ``finals``: event_id -> its final decisions, to tell an identical repeat (``DECIDED_AGAIN``: at least
    once, what the worker without exactly-once does after a crash) from a second, different fate."""
    missing, again, extra = [], [], []
    for event_id in set(accepted) | set(finals_of):
        diff = accepted.get(event_id, 0) - finals_of.get(event_id, 0) - (event_id in still_held)
        if diff > 0:
            missing.append(event_id)
        elif diff < 0:
            fates = (finals or {}).get(event_id, [])
            # an identical repeat adds no fate: as many distinct fates as records (a retry is DEDUPLICATED)
            (again if fates and len(set(fates)) <= accepted.get(event_id, 0) else extra).append(event_id)
    out = _v("accounted", "accepted events without a final decision", missing)
    out += _v("accounted", "events with more final decisions than accepted records", extra)
    out += _v("accounted", DECIDED_AGAIN, again)
    if dead_letters != bad_accepted:
        out.append(Violation("accounted", f"{bad_accepted} bad records accepted, {dead_letters} dead-lettered"))
    return out


def once_at_provider(receipts: dict[str, Counter], sent: dict[str, set[str]]) -> list[Violation]:
    """Invariant 2. ``receipts``: channel -> delivery_id -> messages the provider got; ``sent``: channel ->
    delivery ids reported SENT."""
    out: list[Violation] = []
    for channel, got in receipts.items():
        out += _v("once", f"{channel} deliveries that reached the provider more than once",
                  [d for d, n in got.items() if n > 1])
        out += _v("once", f"{channel} deliveries reported SENT that the provider never got",
                  [d for d in sent.get(channel, ()) if not got.get(d)])
    return out


def attempted(final_decisions: dict[str, list[tuple[str, tuple[str, ...]]]],
              requests: dict[str, tuple[str, str, tuple[str, ...]]],
              statuses: dict[str, list[tuple[str, str | None]]],
              in_flight: frozenset[str] | set[str] = frozenset()) -> list[Violation]:
    """Invariant 3. ``requests``: delivery_id -> (channel, kind, event_ids); ``statuses``: delivery_id ->
    [(status, error)] in order. ``in_flight``: requests first read after the run had settled (held events
    the clock released once the stream stopped): not expected to have ended yet, so not "never ended"."""
    carried: set[tuple[str, str]] = {(e, channel) for channel, _, events in requests.values() for e in events}
    unrequested = [f"{event_id}/{channel}" for event_id, finals in final_decisions.items()
                   for outcome, channels in finals if outcome in DELIVERING
                   for channel in channels if (event_id, channel) not in carried]
    unsettled, dead_without_reason = [], []
    for delivery_id in requests:
        seen = statuses.get(delivery_id, [])
        if not any(status in TERMINAL for status, _ in seen) and delivery_id not in in_flight:
            unsettled.append(delivery_id)
        if any(status == "DEAD" and not error for status, error in seen):
            dead_without_reason.append(delivery_id)
    return (_v("attempted", "final decisions with a channel no delivery request carries", unrequested)
            + _v("attempted", "delivery requests that never ended SENT, SUPPRESSED or DEAD", unsettled)
            + _v("attempted", "deliveries DEAD without a reason", dead_without_reason))


def inbox_counts(mismatched_users: list[str], inapp_sent: set[str], inapp_rows: set[str]) -> list[Violation]:
    """Invariant 4. ``mismatched_users``: users whose counters differ from a recount of their rows."""
    return (_v("inbox", "users whose unread/unseen counters differ from their rows", mismatched_users)
            + _v("inbox", "in-app deliveries reported SENT without an inbox row", inapp_sent - inapp_rows))


def recovered(faults: list[dict], limit_s: float = RECOVERY_LIMIT_S) -> list[Violation]:
    """Invariant 5. Each fault's ``recovery_s`` (None: never resumed) is at most ``limit_s``."""
    slow = [f"{f['name']}#{f['round']}: " + ("never" if f.get("recovery_s") is None else f"{f['recovery_s']:.1f} s")
            for f in faults if not f.get("skipped") and (f.get("recovery_s") is None or f["recovery_s"] > limit_s)]
    return _v("recovery", f"faults after which work did not resume within {limit_s:.0f} s", slow)
