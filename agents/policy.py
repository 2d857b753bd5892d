"""One user's state machine: what happens to an event when it arrives, and what a tick releases later.

Every function here is pure (unless its caller hands the state over: ``owned``): it takes the user's state
(a JSON-able dict, stored in a RocksDB table; ``agents/state.py`` describes it, ``agents/types.py`` types
it), the event or the clock, the user's preferences and presence, and returns the new state with the
decisions and delivery requests to publish. Nothing is ever dropped silently:

- each accepted event gets exactly one *final* decision (ROUTED, DEDUPLICATED, SUPPRESSED_PREFERENCE,
  BATCHED, DIGESTED or CANCELLED), and before it any number of interim ones (SCHEDULED,
  DEFERRED_QUIET_HOURS, THROTTLED, or BATCHED/DIGESTED while the batch or digest is still open);
- an event is *held* (scheduled, quiet hours) until its release time, then routed as if it had just
  arrived; its *parts* (one per channel) go out at once, in a batch or in a digest, and its final
  decision is written when its last part has gone;
- CRITICAL skips preferences, quiet hours, batching, digests and rate limits (never a schedule: that is
  the producer's explicit wish);
- a record read again (its offset at or below the last one this user's state has taken in, ``upto``)
  changes nothing and emits nothing: the shell writes a user's state only after the outputs it caused
  are in Kafka, so a state that has taken a record in means that record's outputs exist. A record
  whose state was lost is decided again from scratch, on its own timestamp, so the same way. The same
  holds for a second copy of a record the shell moved from a wrong partition (``moved``).
- a pending event is stored once, cut to bounds (``state.stored_event``): a part sent at once is built
  from the event as it arrived, a part sent later from what the state kept of it.

Every entry point (``on_event``, ``on_tick``, ``next_due``, ``is_empty``) accepts a state of any
format this code has written (``state.migrate_state``) and returns the current one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, cast

import orjson

from agents import batching, digest, digest_period, preferences, quiet_hours, rate_limit, routing
from agents.dedup import dedup_key, is_duplicate, seen
from agents.dedup import until as dedup_until
from agents.ids import short_key
from agents.preferences import allows_type, meets_minimum
from agents.route import make_decision, single_request
from agents.state import MAX_KEY, SECTIONS, VERSION, migrate_state, new_state, stored_event
from agents.types import Decision, DeliveryRequest, Event, Group, GroupKey, Plan, StoredEvent, UserState
from agents.validate import to_ms
from herald.enums import most_urgent

__all__ = ["CLOSED_MEMORY_MS", "IMMEDIATE_ONLY", "LIMITED", "Outcome", "PolicyConfig", "is_empty", "migrate_state",
           "new_state", "next_due", "normalize", "on_event", "on_tick"]

IMMEDIATE_ONLY = ("INAPP", "WEBSOCKET", "SMS")  # channels whose parts are never batched or digested
CLOSED_MEMORY_MS = 3_600_000  # how long the end of a sent window is remembered, to put late parts after it
LIMITED = ("PUSH", "SMS", "EMAIL")  # channels the per-user rate limits count
TIME_FIELDS = ("occurred_at", "deliver_after")


@dataclass(frozen=True)
class PolicyConfig:
    """The pipeline-wide knobs; each user's own preferences refine them."""

    dedup_window_s: int = 300
    dedup_window_by_type: dict = field(default_factory=dict)
    limits: rate_limit.Limits = rate_limit.Limits()
    batch_window_s: int | None = None  # overrides every user's batch_window_s (tests, demos)
    digest_period_s: int | None = None  # fixed digest periods instead of calendar ones (tests, demos)
    low_digest_mode: str = "DAILY"  # where LOW goes for a user whose digest mode is IMMEDIATE
    # The worker's own token buckets per channel, over all its users (``GlobalLimiter``; empty: none).
    # The one thing here that is not pure: taking a token changes the bucket. They live in memory only.
    global_limits: dict = field(default_factory=dict)

    def dedup_window_ms(self, type_: str) -> int:
        return int(self.dedup_window_by_type.get(type_, self.dedup_window_s)) * 1000


@dataclass
class Outcome:
    state: UserState
    decisions: list[Decision] = field(default_factory=list)
    requests: list[DeliveryRequest] = field(default_factory=list)


AnyEvent = Mapping[str, Any]  # an Event as it arrived, or the StoredEvent a state kept of it


def _copy(state: Mapping[str, Any]) -> UserState:
    """A deep copy of JSON-able state (what the table stores), several times faster than ``copy.deepcopy``."""
    return cast(UserState, orjson.loads(orjson.dumps(state)))


def _writable(state: Mapping[str, Any] | None, owned: bool = False) -> UserState:
    """``state`` in the current format, to be changed: a copy (a new state for None), or ``state`` itself
    when ``owned`` and already current."""
    if not state:
        return new_state()
    if state.get("v") == VERSION:
        return cast(UserState, state) if owned else _copy(state)
    return migrate_state(state)  # a new dict: the stored one is never changed


def is_empty(state: Mapping[str, Any]) -> bool:
    """Nothing pending and nothing remembered (``upto`` alone is not worth keeping); any format."""
    for section in SECTIONS:  # a loop, not any() over a generator: asked after every change of every user
        if state.get(section):
            return False
    return True


def normalize(event: Mapping[str, Any]) -> Event:
    """A JSON-able copy of a decoded event: times as epoch milliseconds."""
    out = dict(event)
    for name in TIME_FIELDS:
        if out.get(name) is not None:
            out[name] = to_ms(out[name])
    out["data"] = dict(out.get("data") or {})
    return cast(Event, out)


def _fmt(ms: int, prefs: dict) -> str:
    """``ms`` as the user's local wall time, e.g. "2026-11-23 14:00 Europe/Berlin" (UTC for an unknown zone)."""
    tz = preferences.zone(prefs)
    return f"{preferences.to_local(tz, ms):%Y-%m-%d %H:%M} {tz.key}"


def _store(state: UserState, event: AnyEvent, stored: StoredEvent | None = None, *, light: bool = False) -> StoredEvent:
    """Keep ``event`` in ``state["events"]`` (once, cut to bounds) and return what is kept of it: ``stored``
    when given (what an earlier call returned for it), the event itself when it is the one kept, unless
    that lacks the body a part other than a digest (``light`` False) needs."""
    event_id = event["event_id"]
    if stored is None or not (light or "body" in stored):
        kept = state["events"].get(event_id)
        stored = kept if kept is event and (light or "body" in event) else stored_event(event, light=light)
    state["events"][event_id] = stored
    return stored


def _forget(state: UserState, ids: list[str]) -> None:
    """Drop the stored events among ``ids`` that no group and no held entry names any more."""
    if not ids:
        return
    named = {i for g in state["groups"].values() for i in g["ids"]}
    named.update(h["id"] for h in state["held"])
    for event_id in ids:
        if event_id not in named:
            state["events"].pop(event_id, None)


# -- arrival ---------------------------------------------------------------------------------------

def on_event(state: Mapping[str, Any] | None, event: Mapping[str, Any], prefs: dict, online: bool, now_ms: int,
             source: str, config: PolicyConfig, offset: int | None = None,
             moved_from: tuple[int, int] | None = None, owned: bool = False) -> Outcome:
    """Decide what happens to a validated ``event`` read from ``source`` (topic:partition:offset) at
    ``offset`` of the user's partition (None: no re-read check, e.g. in tests of one decision).

    ``moved_from``: the (partition, offset) a record produced to the wrong partition was first read at,
    when the shell moved it here. Moving is at least once (a crash after the copy was written and before
    the original's offset was committed moves it again), so a copy whose original offset is at or below
    the last one this user's state has taken in from that partition (``moved``) is a second copy: like a
    record read again, it changes nothing and emits nothing.

    ``owned``: the caller gives ``state`` up (nothing else holds it, and it will not be used again if this
    raises), so it is changed in place and returned rather than copied first; the copy is most of a small
    decision's cost. Otherwise ``state`` is never changed."""
    if state and offset is not None and state.get("upto") is not None and offset <= state["upto"]:
        return Outcome(cast(UserState, state))  # read again: this state already holds what the record did
    if state and moved_from is not None:
        moved_upto = (state.get("moved") or {}).get(str(moved_from[0]))
        if moved_upto is not None and moved_from[1] <= moved_upto:
            return Outcome(cast(UserState, state))  # the same record moved here twice
    new = _writable(state, owned)
    if offset is not None:
        new["upto"] = offset
    if moved_from is not None:
        new["moved"] = {**new.get("moved", {}), str(moved_from[0]): moved_from[1]}
    arrived = normalize(event)
    out = Outcome(new)
    event_id = arrived["event_id"]
    key = dedup_key(arrived)
    if new["dedup"]:  # expired keys go here; the clock only visits when the last of them expires
        new["dedup"] = {k: v for k, v in new["dedup"].items() if now_ms < dedup_until(v)}
    previous = new["dedup"].get(key)
    window_ms = config.dedup_window_ms(arrived["type"])
    if is_duplicate(previous, now_ms):
        first = previous[0] if isinstance(previous, list) else previous["event_id"]  # type: ignore[index]
        reason = ("the same event_id was already accepted" if first == event_id
                  else f"same dedup_key as event {first} within the dedup window")
        out.decisions.append(make_decision(arrived, "DEDUPLICATED", now_ms, reason=reason))
        return out
    new["dedup"][key] = seen(event_id, now_ms, window_ms)

    if arrived["type"] == "CANCEL":
        return _cancel(out, arrived, now_ms)
    critical = arrived["priority"] == "CRITICAL"
    if not critical and not allows_type(prefs, arrived["type"]):
        out.decisions.append(make_decision(arrived, "SUPPRESSED_PREFERENCE", now_ms,
                                           reason=f"the user turned off {arrived['type']} notifications"))
        return out
    if not critical and not meets_minimum(prefs, arrived["priority"]):
        out.decisions.append(make_decision(arrived, "SUPPRESSED_PREFERENCE", now_ms,
                                           reason=f"{arrived['priority']} is below the user's minimum priority "
                                                  f"{prefs.get('minimum_priority')}"))
        return out
    deliver_after = arrived.get("deliver_after")
    if deliver_after and deliver_after > now_ms:
        return _hold(out, arrived, deliver_after, "SCHEDULED", f"scheduled for {_fmt(deliver_after, prefs)}", now_ms)
    return _route(out, arrived, prefs, online, now_ms, config)


def _hold(out: Outcome, event: AnyEvent, release_at: int, why: str, reason: str, now_ms: int) -> Outcome:
    _store(out.state, event)
    out.state["held"].append({"id": event["event_id"], "release_at": release_at, "why": why})
    outcome = "SCHEDULED" if why == "SCHEDULED" else "DEFERRED_QUIET_HOURS"
    out.decisions.append(make_decision(event, outcome, now_ms, reason=reason, final=False, release_at=release_at))
    return out


def _route(out: Outcome, event: AnyEvent, prefs: dict, online: bool, now_ms: int, config: PolicyConfig) -> Outcome:
    """Quiet hours, then channels, then each channel's part: now, in a batch, or in the digest."""
    critical = event["priority"] == "CRITICAL"
    if not critical:
        until = quiet_hours.quiet_until(prefs, now_ms)
        if until is not None:
            return _hold(out, event, until, "QUIET", quiet_hours.describe(prefs, until, now_ms), now_ms)
    chosen = routing.channels(event, prefs, online)
    if not chosen:
        out.decisions.append(make_decision(event, "SUPPRESSED_PREFERENCE", now_ms,
                                           reason="the user turned off every channel this event would use"))
        return out
    # the plan keeps only what its decision names: the event itself is in ``events``
    plan: Plan = {"event": {"event_id": event["event_id"], "user_id": event["user_id"]}, "pending": 0,
                  "outcome": "ROUTED", "channels": chosen, "delivery_ids": [], "notes": []}
    out.state["plans"][event["event_id"]] = plan
    stored: StoredEvent | None = None
    for channel in chosen:
        where = _placement(event, channel, prefs, config)
        if where == "DIGEST":
            stored = _store(out.state, event, stored, light=True)
            _join_digest(out.state, stored, channel, prefs, now_ms, config)
            plan["pending"] += 1
            plan["outcome"] = "DIGESTED"
        elif where == "BATCH":
            stored = _store(out.state, event, stored)
            closes = _join_batch(out, stored, channel, prefs, now_ms, config)
            plan["pending"] += 1
            if plan["outcome"] != "DIGESTED":
                plan["outcome"] = "BATCHED"
            if closes:
                _close_group(out, closes, prefs, now_ms, config, early=True)
        else:
            plan["pending"] += 1
            _send_now(out, event, channel, prefs, now_ms, config)
    _interim_or_final(out, event["event_id"], now_ms)
    return out


def _placement(event: AnyEvent, channel: str, prefs: dict, config: PolicyConfig) -> str:
    """"NOW", "BATCH" or "DIGEST" for one channel's part of ``event``.

    At once: CRITICAL and HIGH, an event with ``batchable`` false, and the channels that are never held
    (in-app, websocket, SMS). Otherwise an email part goes in the digest when the event is LOW or the
    user's digest mode is not IMMEDIATE, and a NORMAL part in a batch when the user batches. An
    event's explicit ``channels`` only choose the channels (``routing``): they change nothing here.
    """
    priority = event["priority"]
    if priority in ("CRITICAL", "HIGH") or channel in IMMEDIATE_ONLY or event.get("batchable") is False:
        return "NOW"
    if channel == "EMAIL" and (priority == "LOW" or prefs.get("digest_mode", "IMMEDIATE") != "IMMEDIATE"):
        return "DIGEST"
    if priority == "NORMAL" and prefs.get("batching", True):
        return "BATCH"
    return "NOW"


def _interim_or_final(out: Outcome, event_id: str, now_ms: int) -> None:
    plan = out.state["plans"].get(event_id)
    if plan is None:
        return
    event = plan["event"]
    if plan["pending"] == 0:
        del out.state["plans"][event_id]
        reason = "; ".join(plan["notes"]) or f"sent to {', '.join(c.lower() for c in plan['channels'])}"
        out.decisions.append(make_decision(event, plan["outcome"], now_ms, channels=plan["channels"],
                                           delivery_id=plan["delivery_ids"][-1] if plan["delivery_ids"] else None,
                                           reason=reason))
    elif plan["outcome"] in ("BATCHED", "DIGESTED"):
        release = min((g["end"] for g in out.state["groups"].values() if event_id in g["ids"]), default=None)
        what = "the digest" if plan["outcome"] == "DIGESTED" else "a batch"
        out.decisions.append(make_decision(event, plan["outcome"], now_ms, channels=plan["channels"],
                                           reason=f"waiting for {what}", final=False, release_at=release))


# -- parts -----------------------------------------------------------------------------------------

def _part_sent(out: Outcome, event_id: str, request_id: str, note: str | None = None) -> None:
    plan = out.state["plans"].get(event_id)
    if plan is None:
        return
    plan["pending"] -= 1
    plan["delivery_ids"].append(request_id)
    if note:
        plan["notes"].append(note)


def _limited(state: UserState, channel: str, event_priority: str, prefs: dict, now_ms: int,
             config: PolicyConfig) -> int | None:
    if event_priority == "CRITICAL" or channel not in LIMITED:
        return None
    limits = config.limits.with_max_per_hour(preferences.max_per_hour(prefs))
    later = rate_limit.next_allowed(state["rates"].get(channel), now_ms, limits)
    if later is None and channel in config.global_limits:
        later = config.global_limits[channel].take(now_ms)  # a token is taken only for a send that goes now
    return later


def _count(state: UserState, channel: str, now_ms: int) -> None:
    if channel in LIMITED:
        state["rates"][channel] = rate_limit.record(state["rates"].get(channel), now_ms)


def _send_now(out: Outcome, event: AnyEvent, channel: str, prefs: dict, now_ms: int, config: PolicyConfig) -> None:
    later = _limited(out.state, channel, event["priority"], prefs, now_ms, config)
    if later is not None:
        _throttle(out, [_store(out.state, event)], channel, later, prefs, now_ms)
        return
    request = single_request(event, channel, now_ms)
    out.requests.append(request)
    _count(out.state, channel, now_ms)
    _part_sent(out, event["event_id"], request["delivery_id"])


def _throttle(out: Outcome, events: list[StoredEvent], channel: str, until: int, prefs: dict, now_ms: int) -> None:
    """Over the rate limit: the part waits in a batch that closes when the window allows."""
    type_ = events[0]["type"]
    key = GroupKey("T", channel, type_, until).format()
    group = out.state["groups"].setdefault(key, {"kind": "BATCH", "type": type_, "channel": channel,
                                                 "start": now_ms, "end": until, "label": "", "ids": []})
    for e in events:
        _add(group, e["event_id"])
        out.decisions.append(_throttled(e, channel, until, prefs, now_ms))


def _throttled(event: AnyEvent, channel: str, until: int, prefs: dict, now_ms: int) -> Decision:
    return make_decision(event, "THROTTLED", now_ms, channels=[channel], final=False, release_at=until,
                         reason=f"{channel.lower()} is over the user's rate limit; goes at {_fmt(until, prefs)}")


def _add(group: Group, event_id: str) -> None:
    if event_id not in group["ids"]:
        group["ids"].append(event_id)


def _join_batch(out: Outcome, event: StoredEvent, channel: str, prefs: dict, now_ms: int,
                config: PolicyConfig) -> str | None:
    """Add the part to its tumbling window's batch; the key of a batch that is now full, else None."""
    window_s = config.batch_window_s or preferences.batch_window_s(prefs)
    start, end = batching.window(now_ms, window_s)
    closed = _closed(out.state, GroupKey("B", channel, event["type"], start).series())
    if closed is not None and start < closed:  # late for a window already sent: the next one takes it
        start, end = batching.window(closed, window_s)
    key = GroupKey("B", channel, event["type"], start).format()
    group = out.state["groups"].setdefault(key, {"kind": "BATCH", "type": event["type"], "channel": channel,
                                                 "start": start, "end": end, "label": "", "ids": []})
    _add(group, event["event_id"])
    return key if len(group["ids"]) >= preferences.max_batch_size(prefs) else None


def _join_digest(state: UserState, event: StoredEvent, channel: str, prefs: dict, now_ms: int,
                 config: PolicyConfig) -> None:
    mode = prefs.get("digest_mode", "IMMEDIATE")
    mode_prefs = prefs if mode in ("HOURLY", "DAILY", "WEEKLY") else {**prefs, "digest_mode": config.low_digest_mode}
    start, end = digest_period.period(mode_prefs, now_ms, config.digest_period_s) or (now_ms, now_ms)
    closed = _closed(state, GroupKey("D", channel, None, start).series())
    if closed is not None and start < closed:  # late for a period already sent: the next one takes it
        start, end = digest_period.period(mode_prefs, closed, config.digest_period_s) or (closed, closed)
    key = GroupKey("D", channel, None, start).format()
    group = state["groups"].get(key)
    if group is None:
        group = state["groups"][key] = {"kind": "DIGEST", "type": None, "channel": channel, "start": start,
                                        "end": end, "label": digest_period.label(mode_prefs, (start, end)), "ids": []}
    _add(group, event["event_id"])


def _closed(state: UserState, series: str) -> int | None:
    """The end of the last window (period) of ``series`` (``GroupKey.series()``) sent."""
    return state.get("closed", {}).get(series)


def _close_group(out: Outcome, key: str, prefs: dict, now_ms: int, config: PolicyConfig, early: bool = False) -> None:
    group = out.state["groups"].pop(key)
    stored = out.state["events"]
    events = sorted((stored[i] for i in group["ids"]), key=lambda e: (e["occurred_at"], e["event_id"]))
    if not events:
        return
    quiet = quiet_hours.quiet_until(prefs, now_ms)
    if quiet is not None:  # a window that closes in quiet hours waits for them to end
        out.state["groups"][key] = {**group, "end": quiet}
        return
    channel = group["channel"]
    later = _limited(out.state, channel, most_urgent(e["priority"] for e in events), prefs, now_ms, config)
    if later is not None and group["kind"] == "DIGEST":
        # a digest over the rate limit waits whole, as in quiet hours: a throttled batch of one type
        # would mix the digest's types
        out.state["groups"][key] = {**group, "end": later}
        out.decisions.extend(_throttled(e, channel, later, prefs, now_ms) for e in events)
        return
    gkey = GroupKey.parse(key)
    if not early and gkey.kind in "BD":
        # a window is sent once: a part arriving late for it (the worker behind, a record read after a
        # rebalance) goes in the next one, never in a second request named like this one
        closed = out.state.setdefault("closed", {})
        series = gkey.series()
        closed[series] = max(closed.get(series, 0), group["end"])
    if later is not None:
        _throttle(out, events, channel, later, prefs, now_ms)
        return
    requests: list[DeliveryRequest] = []
    if group["kind"] == "DIGEST":
        request = digest.digest_request(events[0]["user_id"], channel, events, group["start"], group["end"],
                                        group["label"])
        assert request is not None  # events is not empty
        requests.append(request)
        chunks = [events]
        note = f"in the {group['label']} ({channel.lower()})"
    else:
        chunks = batching.split_full(events, preferences.max_batch_size(prefs))
        for i, chunk in enumerate(chunks):
            if len(chunk) == 1:
                requests.append(single_request(chunk[0], channel, now_ms))
            else:
                label_end = group["end"] if not early else now_ms
                type_ = group["type"] or chunk[0]["type"]
                requests.append(batching.batch_request(chunk[0]["user_id"], channel, type_, chunk, group["start"],
                                                       label_end, chunk=i, chunks=len(chunks), by_content=early))
        note = f"in a batch on {channel.lower()}"
    for chunk, request in zip(chunks, requests):
        out.requests.append(request)
        _count(out.state, channel, now_ms)
        for e in chunk:
            _part_sent(out, e["event_id"], request["delivery_id"],
                       note=f"{note}: {request['title']}" if group["kind"] == "DIGEST" or len(chunk) > 1 else None)
            _finish_if_done(out, e["event_id"], now_ms)
    _forget(out.state, group["ids"])


def _finish_if_done(out: Outcome, event_id: str, now_ms: int) -> None:
    plan = out.state["plans"].get(event_id)
    if plan is not None and plan["pending"] == 0:
        _interim_or_final(out, event_id, now_ms)


# -- cancellation ----------------------------------------------------------------------------------

def _cancel(out: Outcome, cancel: Event, now_ms: int) -> Outcome:
    """Withdraw every pending part of the user's events with the CANCEL event's ``cancel_key``."""
    key = cancel["cancel_key"] or ""
    stored_key = short_key(key, MAX_KEY)  # what ``state.stored_event`` kept of each event's key
    state = out.state
    events = state["events"]
    withdrawn: list[str] = []
    kept = []
    for held in state["held"]:
        if events[held["id"]].get("cancel_key") == stored_key:
            if held["id"] not in withdrawn:
                withdrawn.append(held["id"])
        else:
            kept.append(held)
    state["held"] = kept
    for gkey in list(state["groups"]):
        group = state["groups"][gkey]
        matching = [i for i in group["ids"] if events[i].get("cancel_key") == stored_key]
        if matching:
            group["ids"] = [i for i in group["ids"] if i not in matching]
            withdrawn.extend(i for i in matching if i not in withdrawn)
        if not group["ids"]:
            del state["groups"][gkey]
    for event_id in withdrawn:
        event = events[event_id]
        plan = state["plans"].pop(event_id, None)
        sent = (f" ({', '.join(c.lower() for c in plan['channels'])} parts already sent stay sent)"
                if plan and plan["delivery_ids"] else "")
        out.decisions.append(make_decision(event, "CANCELLED", now_ms,
                                           reason=f"withdrawn by CANCEL event {cancel['event_id']}{sent}"))
    _forget(state, withdrawn)
    out.decisions.append(make_decision(cancel, "CANCELLED", now_ms,
                                       reason=f"withdrew {len(withdrawn)} pending notification(s) "
                                              f"with cancel_key {key!r}"))
    return out


# -- the clock -------------------------------------------------------------------------------------

def on_tick(state: Mapping[str, Any] | None, prefs: dict, online: bool, now_ms: int, config: PolicyConfig,
            owned: bool = False) -> Outcome:
    """Release what is due at ``now_ms``: held events, closed batches and digests, expired dedup keys.
    ``owned`` as for ``on_event``."""
    new = _writable(state, owned)
    out = Outcome(new)
    groups = new["groups"]
    for gkey in sorted((k for k, g in groups.items() if g["end"] <= now_ms), key=lambda k: groups[k]["end"]):
        if gkey in groups:
            _close_group(out, gkey, prefs, now_ms, config)
    due = [h for h in new["held"] if h["release_at"] <= now_ms]
    if due:
        new["held"] = [h for h in new["held"] if h["release_at"] > now_ms]
        released = [new["events"][h["id"]] for h in sorted(due, key=lambda h: (h["release_at"], h["id"]))]
        for event in released:  # taken first: routing one may close a batch and forget what the next needs
            _route(out, event, prefs, online, now_ms, config)
        _forget(new, [h["id"] for h in due])
    new["dedup"] = {k: v for k, v in new["dedup"].items() if now_ms < dedup_until(v)}
    if new.get("closed"):
        new["closed"] = {k: end for k, end in new["closed"].items() if end > now_ms - CLOSED_MEMORY_MS}
    new["rates"] = {c: r for c, r in new["rates"].items()
                    if _recent(r, now_ms) or rate_limit.next_allowed(r, now_ms, config.limits) is not None}
    return out


def _recent(counters: dict[str, list[int]], now_ms: int) -> bool:
    """Counters still matter while their day window is open."""
    day = counters.get("d")
    return day is not None and len(day) > 0 and now_ms < day[0] + 86_400_000


def next_due(state: Mapping[str, Any]) -> int | None:
    """When this user next needs a tick: the earliest release or window end, or when the last dedup key
    expires (expired keys are also dropped as events arrive, so one visit clears them all).

    Reads every state format as it is (only times are needed), so indexing old states costs no migration."""
    # a running minimum, not a list of every time: asked for each user after each change and at each restore
    due = None
    for held in state.get("held") or ():
        if due is None or held["release_at"] < due:
            due = held["release_at"]
    for group in (state.get("groups") or {}).values():
        if due is None or group["end"] < due:
            due = group["end"]
    dedup = state.get("dedup")
    if dedup:
        last = max(dedup_until(v) for v in dedup.values())
        if due is None or last < due:
            due = last
    for counters in (state.get("rates") or {}).values():
        day = counters.get("d")
        if day and (due is None or day[0] + 86_400_000 < due):
            due = day[0] + 86_400_000
    return due
