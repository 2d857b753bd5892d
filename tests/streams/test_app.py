"""The Faust app's settings that are Herald's choice, not Faust's defaults."""
from __future__ import annotations

import asyncio

from streams.app import create_app
from streams.settings import Settings


def test_the_worker_consumer_fetches_with_herald_s_wait_and_no_standby_replicas(tmp_path):
    async def made() -> tuple[int, int]:
        app = create_app(Settings(app_id="test-app-settings", fetch_max_wait_ms=7, data_dir=str(tmp_path)))
        thread = app.consumer._thread  # the thread that owns Faust's aiokafka consumer
        consumer = thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms, app.conf.table_standby_replicas

    wait_ms, standbys = asyncio.run(made())
    assert wait_ms == 7  # not the 1,500 ms Faust hard-codes, which CRITICAL events waited for
    assert standbys == 0
    assert Settings().fetch_max_wait_ms == 10 and Settings(standby_replicas=1).standby_replicas == 1
