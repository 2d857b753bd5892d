"""The worker's tables' changelog topics are created as durable as Herald's other topics."""
from __future__ import annotations

import asyncio

from herald.settings import Settings
from streams.states import COMPACTED
from streams.worker import create_worker


def test_every_changelog_carries_min_insync_replicas(tmp_path):
    async def configs() -> dict[str, dict]:
        settings = Settings.from_env(app_id="test-tables-isr", data_dir=str(tmp_path), topic_replication_factor=3,
                                     topic_min_insync_replicas=2)
        app = create_worker(settings, register=False)
        return {name: dict(table.changelog_topic.config or {}) for name, table in app.tables.items()}

    got = asyncio.run(configs())
    assert set(got) == {"states", "preferences", "presence"}
    assert {name: config.get("min.insync.replicas") for name, config in got.items()} == {
        "states": "2", "preferences": "2", "presence": "2"}
    assert COMPACTED.items() <= got["states"].items()  # the states' own segment and size settings kept
