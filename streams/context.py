"""What the policy needs to know of a user besides their state: preferences and presence.

Both tables are written by this worker's own agents from their topics (co-partitioned with the events,
so a user's preferences and presence live on the user's partition) and read through ``Mirrored`` caches,
which are only right while the worker owns the partitions: ``forget`` clears them at every rebalance.
"""
from __future__ import annotations

from typing import Any

from agents.preferences import effective
from agents.presence import online
from herald.settings import Settings
from streams import faust_adapter
from streams.mirror import Mirrored
from streams.states import changelog_configs, store_options

MAX_EFFECTIVE = 50_000  # users with a preferences record whose effective preferences are kept ready
# The effective preferences of every user without a record: one dict for them all (the policy only reads
# preferences), instead of a copy of the defaults per user in the cache below.
NO_RECORD = effective(None, "")


class UserContext:
    def __init__(self, app: Any, settings: Settings) -> None:
        configs = changelog_configs(settings)
        self.preferences = Mirrored(app.Table("preferences", default=None, partitions=settings.partitions,
                                              extra_topic_configs=configs, options=store_options(settings)),
                                    encode_key=faust_adapter.json_key)
        self.presence = Mirrored(app.Table("presence", default=None, partitions=settings.partitions,
                                           extra_topic_configs=configs, options=store_options(settings)),
                                 encode_key=faust_adapter.json_key)
        self._effective: dict[str, dict] = {}

    def of(self, user_id: str, partition: int, now_ms: int) -> tuple[dict, bool]:
        """The user's effective preferences and whether they are online at ``now_ms``."""
        prefs = self._effective.get(user_id)
        if prefs is None:
            record = self.preferences.get(user_id, partition)
            if record is None:
                prefs = NO_RECORD
            else:
                if len(self._effective) >= MAX_EFFECTIVE:
                    self._effective.clear()
                prefs = self._effective[user_id] = effective(record, user_id)
        return prefs, online(self.presence.get(user_id, partition), now_ms)

    def set_preferences(self, user_id: str, record: dict | None) -> None:
        """Store a validated preferences record; None resets the user to the defaults."""
        if record is None:
            del self.preferences[user_id]
        else:
            self.preferences[user_id] = record
        self._effective.pop(user_id, None)

    def set_presence(self, user_id: str, entry: dict | None) -> None:
        """Store an online entry (``online``, ``expires_at``, ``connection_id``); None: offline."""
        if entry is None:
            del self.presence[user_id]
        else:
            self.presence[user_id] = entry

    def forget(self) -> None:
        for cache in (self.preferences, self.presence, self._effective):
            cache.clear()
