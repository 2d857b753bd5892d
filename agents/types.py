"""The core's data, typed: an event, a decision, a delivery request, and one user's stored state.

These are ``TypedDict``s: plain dicts at run time (what Avro decodes to, what the states table stores
as JSON), described for readers and for mypy at no cost per event. ``GroupKey`` names one pending group
of a user's state and is the one place its string form (the JSON key) is built and read.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, NotRequired, TypedDict


class Event(TypedDict):
    """A decoded ``herald.NotificationEvent``, times as epoch ms (``policy.normalize``)."""

    event_id: str
    user_id: str
    type: str
    priority: str
    title: str
    body: str
    data: dict[str, str]
    occurred_at: int
    dedup_key: str | None
    batchable: bool
    channels: list[str] | None
    deliver_after: int | None
    cancel_key: str | None


class StoredEvent(TypedDict):
    """What a user's state keeps of a pending event: enough for a single, batch or digest request and for
    routing it again, text cut to bounds (``state.stored_event``). A missing optional key is its default."""

    event_id: str
    user_id: str
    type: str
    priority: str
    title: str
    occurred_at: int
    body: NotRequired[str]  # absent only while the event waits for digests alone (they list titles)
    data: NotRequired[dict[str, str]]  # absent: {} (or waiting for digests alone)
    cancel_key: NotRequired[str]  # absent: none
    channels: NotRequired[list[str]]  # absent: routing chooses
    batchable: NotRequired[bool]  # absent: true


class Decision(TypedDict):
    """A ``herald.Decision``."""

    event_id: str
    user_id: str
    outcome: str
    channels: list[str]
    delivery_id: str | None
    reason: str
    at: int
    final: bool
    release_at: int | None


class DeliveryRequest(TypedDict):
    """A ``herald.DeliveryRequest``."""

    delivery_id: str
    user_id: str
    channel: str
    kind: str
    event_ids: list[str]
    type: str
    priority: str
    title: str
    body: str
    data: dict[str, str]
    created_at: int


class Held(TypedDict):
    """An event waiting in full (scheduled, quiet hours) until ``release_at``, then routed as if it had just arrived."""

    id: str
    release_at: int
    why: str  # "SCHEDULED" or "QUIET"


class Group(TypedDict):
    """One channel's parts waiting to go together: a batch window, a digest period, or a throttled send."""

    kind: str  # "BATCH" or "DIGEST"
    type: str | None  # None for a digest (it mixes types)
    channel: str
    start: int
    end: int  # when it is released
    label: str
    ids: list[str]  # event ids, in arrival order, each once


class PlanEvent(TypedDict):
    event_id: str
    user_id: str


class Plan(TypedDict):
    """An event routed, some of its parts still waiting: its final decision is written when ``pending`` is 0."""

    event: PlanEvent
    pending: int
    outcome: str
    channels: list[str]
    delivery_ids: list[str]
    notes: list[str]


class UserState(TypedDict):
    """One user's state, version 2 (``state.migrate_state`` reads older ones)."""

    v: int
    upto: NotRequired[int]  # the last offset of the user's partition taken in
    moved: NotRequired[dict[str, int]]  # partition -> last original offset of a record moved here from it
    dedup: dict[str, list]  # dedup key -> [first event_id, until_ms]
    events: dict[str, StoredEvent]  # every pending event, once, by id
    held: list[Held]
    groups: dict[str, Group]  # GroupKey.format() -> group
    plans: dict[str, Plan]  # event id -> plan
    rates: dict[str, dict[str, list[int]]]  # channel -> rate-limit counters
    closed: NotRequired[dict[str, int]]  # GroupKey.series() -> end of the last window sent


GroupKind = Literal["B", "D", "T"]


class GroupKey(NamedTuple):
    """The key of a group in a user's state: ``kind`` "B" (a batch window, ``start`` its start), "D" (a digest
    period of ``channel``, ``type`` None) or "T" (a throttled send, ``start`` when it may go).

    Formatted ``"B|<channel>|<type>|<start>"``, ``"D|<channel>|<start>"``, ``"T|<channel>|<type>|<until>"``;
    a type may itself hold "|": ``parse`` takes the channel from the left and the time from the right.
    """

    kind: str
    channel: str
    type: str | None
    start: int

    def format(self) -> str:
        if self.kind == "D":
            return f"D|{self.channel}|{self.start}"
        return f"{self.kind}|{self.channel}|{self.type}|{self.start}"

    def series(self) -> str:
        """The windows this one follows on from: ``"B|<channel>|<type>"`` or ``"D|<channel>"``."""
        return f"D|{self.channel}" if self.kind == "D" else f"{self.kind}|{self.channel}|{self.type}"

    @classmethod
    def parse(cls, key: str) -> GroupKey:
        """The inverse of ``format``; raises ``ValueError`` for a string it did not make."""
        kind, channel, rest = key.split("|", 2)
        if kind == "D":
            return cls(kind, channel, None, int(rest))
        if kind not in ("B", "T"):
            raise ValueError(f"not a group key: {key!r}")
        type_, start = rest.rsplit("|", 1)
        return cls(kind, channel, type_, int(start))
