"""One user's stored state: its version, what it keeps of a pending event, its size, and reading old formats.

Version 2 (``"v": 2``, ``types.UserState``) keeps each pending event once, in ``events`` by id; the held
list and the groups (batch windows, digest periods, throttled sends) hold ids. Version 1 (no ``"v"``)
kept a full copy of the event in every group and held entry it was in: an offline user's NORMAL event
sat in both the push and the email batch, so two 254 KB events made a 1 MB state, over Kafka's
record limit. ``migrate_state`` reads every older format; the policy writes only the current one.

What a state keeps of an event (``stored_event``) is what a single, batch or digest request and the
routing of a held event need, cut to bounds: ``title`` to ``MAX_TITLE`` characters, ``body`` to
``MAX_BODY``, each ``data`` value to ``MAX_DATA_VALUE``, at most ``MAX_DATA_ENTRIES`` entries and
``MAX_DATA_CHARS`` characters of keys and values in all (entries in the event's own order; those past
a bound are left out), a ``cancel_key`` over 256 characters as its digest (``ids.short_key``). A text
that was cut ends with "…", so a request built from it says nothing false; the cut depends only on
the event, so deciding the same record again yields the same request. An event stored for digests
alone (a LOW event's email part, the usual reason a state holds many events for a day) keeps no
``body`` and no ``data``: a digest lists titles only.
"""
from __future__ import annotations

from typing import Any, Mapping, cast

from agents.dedup import until as dedup_until
from agents.ids import short_key
from agents.types import StoredEvent, UserState

VERSION = 2
MAX_TITLE = 500
MAX_BODY = 4_000
MAX_DATA_VALUE = 1_000
MAX_DATA_ENTRIES = 50
MAX_DATA_CHARS = 8_000
MAX_KEY = 256
ELLIPSIS = "…"
SECTIONS = ("dedup", "events", "held", "groups", "plans", "rates")


def new_state() -> UserState:
    return {"v": VERSION, "dedup": {}, "events": {}, "held": [], "groups": {}, "plans": {}, "rates": {}}


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit - 1`` and "…"."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def stored_event(event: Mapping[str, Any], *, light: bool = False) -> StoredEvent:
    """What a state keeps of a (normalized) event; see the module's doc for the bounds. ``light``: for
    digests alone, without ``body`` and with only ``data["action_url"]`` (a digest lists titles and links)."""
    out: dict[str, Any] = {"event_id": event["event_id"], "user_id": event["user_id"], "type": event["type"],
                           "priority": event["priority"], "title": cut(event.get("title") or "", MAX_TITLE),
                           "occurred_at": event["occurred_at"]}
    if not light:
        out["body"] = cut(event.get("body") or "", MAX_BODY)
    data = event.get("data")
    if light and data and data.get("action_url"):
        out["data"] = {"action_url": cut(data["action_url"], MAX_DATA_VALUE)}
    elif data and not light:
        kept: dict[str, str] = {}
        chars = 0
        for k, v in data.items():
            if len(kept) == MAX_DATA_ENTRIES:
                break
            v = cut(v, MAX_DATA_VALUE)
            chars += len(k) + len(v)
            if chars > MAX_DATA_CHARS:
                break
            kept[k] = v
        out["data"] = kept
    if event.get("cancel_key"):
        out["cancel_key"] = short_key(event["cancel_key"], MAX_KEY)
    if event.get("channels"):
        out["channels"] = list(event["channels"])
    if event.get("batchable") is False:
        out["batchable"] = False
    return cast(StoredEvent, out)


def migrate_state(raw: Mapping[str, Any]) -> UserState:
    """The state ``raw`` in the current format: ``raw`` itself when it is current, else a new dict (``raw``
    is never changed). Version 1 (no ``"v"``): events embedded in groups (``"events": {id: event}``) and
    held entries (``"event"``) move to ``events``, cut as ``stored_event`` does; dedup entries written as
    dicts (before version 1 settled on ``[event_id, until]``) and dedup keys over 256 characters are
    converted. Raises ``ValueError`` for a version newer than this code knows."""
    version = raw.get("v", 1)
    if version == VERSION:
        return cast(UserState, raw)
    if version != 1:
        raise ValueError(f"user state version {version!r} is newer than this worker knows ({VERSION})")
    state = new_state()
    events = state["events"]
    for key, entry in (raw.get("dedup") or {}).items():
        if not isinstance(entry, list):
            entry = [entry.get("event_id"), dedup_until(entry)]
        if key.startswith("k:"):
            key = "k:" + short_key(key[2:], MAX_KEY)
        state["dedup"][key] = list(entry)
    for held in raw.get("held") or ():
        event = held["event"]
        events.setdefault(event["event_id"], stored_event(event))
        state["held"].append({"id": event["event_id"], "release_at": held["release_at"], "why": held["why"]})
    for key, group in (raw.get("groups") or {}).items():
        ids = []
        for event_id, event in group["events"].items():
            events.setdefault(event_id, stored_event(event))
            ids.append(event_id)
        state["groups"][key] = {"kind": group["kind"], "type": group["type"], "channel": group["channel"],
                                "start": group["start"], "end": group["end"], "label": group.get("label", ""),
                                "ids": ids}
    for event_id, plan in (raw.get("plans") or {}).items():
        state["plans"][event_id] = {"event": {"event_id": plan["event"]["event_id"], "user_id": plan["event"]["user_id"]},
                                    "pending": plan["pending"], "outcome": plan["outcome"],
                                    "channels": list(plan["channels"]), "delivery_ids": list(plan["delivery_ids"]),
                                    "notes": list(plan["notes"])}
    state["rates"] = {c: {k: list(v) for k, v in r.items()} for c, r in (raw.get("rates") or {}).items()}
    if raw.get("closed"):
        state["closed"] = dict(raw["closed"])
    if raw.get("upto") is not None:
        state["upto"] = raw["upto"]
    if raw.get("moved"):
        state["moved"] = {str(k): int(v) for k, v in raw["moved"].items()}
    return state


# -- size -------------------------------------------------------------------------------------------
# UTF-8 takes at most 4 bytes a character, and JSON escapes the characters a validated event may hold
# (quotes, backslashes, line breaks, tabs) in 2: so 4 bytes a character bound the JSON of any text.

_B = 4
_ID = 256  # agents.validate.MAX_ID, for event_id and user_id
_TYPE = 64  # agents.validate.MAX_TYPE
_DATA_KEY = 256  # agents.validate.MAX_DATA_KEY
_FIELDS = 400  # field names, punctuation, numbers, priority, channels and flags of one stored event
STORED_EVENT_BYTES = (_B * (2 * _ID + _TYPE + MAX_TITLE + MAX_BODY + MAX_DATA_CHARS + MAX_KEY)
                      + 6 * MAX_DATA_ENTRIES + _FIELDS)
_NOTE = 300  # one note of a plan: "in the <label> (<channel>): <request title>"
PLAN_BYTES = _B * (2 * _ID) + 5 * 40 + 5 * _B * _NOTE + 200  # ids, five delivery ids, five notes, names
REFERENCES_BYTES = 6 * (_B * _ID + 3)  # the event's id in five channels' groups and the held list
GROUP_BYTES = _B * (_TYPE + 40) + 200  # a group of its own (its key, label and fields) for each of five channels
DEDUP_BYTES = _B * (MAX_KEY + _ID) + 40
PENDING_EVENT_BYTES = STORED_EVENT_BYTES + PLAN_BYTES + REFERENCES_BYTES + 5 * GROUP_BYTES + DEDUP_BYTES
REMEMBERED_EVENT_BYTES = DEDUP_BYTES + _B * (_TYPE + 40) + 40  # a dedup entry and a window's end in "closed"
STATE_BASE_BYTES = 1_000  # version, upto, section names, rate counters of three channels


def state_size_bound(pending: int, remembered: int = 0) -> int:
    """An upper bound on the JSON size in bytes of a state holding ``pending`` events still to be sent (held,
    or with parts in groups) and ``remembered`` others (sent or dropped, still in the dedup window or
    with a window's end kept in ``closed``): each pending event costs at most ``PENDING_EVENT_BYTES``
    whatever the event's own size, since what is stored of it is cut (``stored_event``)."""
    return STATE_BASE_BYTES + pending * PENDING_EVENT_BYTES + remembered * REMEMBERED_EVENT_BYTES
