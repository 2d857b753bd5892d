"""The decision clock: which time a record, a tick and a release are decided at.

The rules:
- A record is decided on its own timestamp, so deciding it again after a crash gives the same answer.
  The wall clock is used only for a record without a timestamp (None, 0 or negative) or one ahead of
  the wall clock (a producer whose clock is fast must not release the future early).
- A tick's clock is its own time, unless its partition is behind: more than ``behind`` events still
  unread (after a restart), or, while events are being read (``live``), any unread and the last one read
  more than ``lag_ms`` older than the tick (the tail of a backlog). Then it is at most the time of the last
  event read, so nothing held is released before the events that were waiting behind it are decided, and
  a release never opens a rate window that the user's older events, read after it, would count in: the
  decisions of a backlog do not depend on how fast it is read. A quiet partition whose last offsets are
  not events (transaction markers, aborted records) counts as unread for ever, so it is behind only by
  the count; and a producer whose clock runs more than ``lag_ms`` behind delays the releases of a partition
  it writes to while that partition is being read.
- One batch of records releases at most ``chunk`` due users while the partition is quiet, and a tenth
  of that (at least one) while events arrive on it, so an event arriving behind a million due digests
  waits for a few hundred releases, not thousands.
"""
from __future__ import annotations


def decision_time(record_ts_ms: int | None, wall_ms: int) -> int:
    """The time a record is decided at: its timestamp (ms), or ``wall_ms`` when it has none or is ahead of it."""
    if record_ts_ms is None or record_ts_ms <= 0:
        return wall_ms
    return min(record_ts_ms, wall_ms)


def tick_time(tick_ms: int, unread: int | None, last_event_ms: int | None, behind: int = 1000, *,
              live: bool = False, lag_ms: int = 5_000) -> int:
    """A tick's clock: ``tick_ms``, or ``min(tick_ms, last_event_ms)`` when more than ``behind`` events of the
    partition are unread, or when ``live`` (an event was read just now), some are unread and the last event
    read is more than ``lag_ms`` older than the tick (``unread`` None: not known, e.g. before the first
    event; ``last_event_ms`` None: no event read yet; either way the tick keeps its own time)."""
    if unread is None or last_event_ms is None:
        return tick_ms
    if unread > behind or (live and unread > 0 and tick_ms - last_event_ms > lag_ms):
        return min(tick_ms, last_event_ms)
    return tick_ms


def release_limit(chunk: int, busy: bool) -> int:
    """How many due users one batch of records may release: ``chunk`` (HERALD_RELEASE_CHUNK) when the
    partition is quiet, ``max(1, chunk // 10)`` while events arrive on it (``busy``)."""
    return max(1, chunk // 10) if busy else chunk
