"""A schema registry that cannot answer pauses the worker; it never dead-letters a valid event.

The worker reaches the real registry through a small HTTP proxy of the test's own that can be told to
answer 503 for everything, as a registry behind a failing load balancer does."""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time

import aiohttp
import fastavro
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.integration.test_ingest_catalogue import consume_all, evolved_schema
from tests.integration.test_policy_pipeline import Stage, ev, new_pipeline, wait_for

pytestmark = pytest.mark.integration


class FlakyProxy(threading.Thread):
    """Forwards every request to ``upstream`` while ``up``; answers 503 otherwise. Counts the 503s."""

    def __init__(self, upstream: str) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.up = True
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if not self.up:
            self.refused += 1
            return web.json_response({"error_code": 50301, "message": "unavailable"}, status=503)
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, f"{self.upstream}{request.rel_url}", data=await request.read(),
                                       headers={k: v for k, v in request.headers.items() if k.lower() != "host"}) as r:
                return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()


def test_an_event_with_a_new_schema_id_waits_out_a_registry_outage_and_is_then_decided(stack, tmp_path_factory):
    p = new_pipeline(tmp_path_factory, "reg")
    real = p.settings.schema_registry_url
    root = real.split("/apis/")[0]
    proxy = FlakyProxy(root)
    proxy.start()
    assert proxy.ready.wait(10)
    p.env["HERALD_SCHEMA_REGISTRY_URL"] = real.replace(root, f"http://127.0.0.1:{proxy.port}")
    try:
        p.start("worker")
        stage = Stage(p)
        user = f"{stage.unique}-u"
        warm = ev(user, "warm", channels=["INAPP"])
        stage.send(warm)
        wait_for(lambda: stage.out.of(user, warm["event_id"], final=True), 60, "the warm-up decision", stage.out, user)

        proxy.up = False
        topic = p.settings.topic("events")
        schema = json.loads(evolved_schema(optional_field="mood"))
        new_id = stage.codec.registry.register_text(f"{topic}-value", json.dumps(schema))  # straight to the registry
        event = {**ev(user, "new-schema", channels=["INAPP"]), "mood": "fine"}
        buf = io.BytesIO()
        buf.write(struct.pack(">bI", 0, new_id))
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), event)
        stage.producer.produce(topic, key=user.encode(), value=buf.getvalue())
        assert stage.producer.flush(10) == 0

        wait_for(lambda: proxy.refused > 0, 30, "the worker to ask the registry for the new id")
        time.sleep(3)
        assert not stage.out.of(user, event["event_id"]), "no decision while the registry cannot answer"
        assert p.procs["worker"].poll() is None, "the worker waits; it does not exit"
        proxy.up = True
        decided = wait_for(lambda: stage.out.of(user, event["event_id"], final=True), 90,
                           "the event's decision once the registry answers again", stage.out, user)
        assert decided[0]["outcome"] == "ROUTED"
        letters = [m for m in consume_all(p.settings.kafka_bootstrap, p.settings.topic("dlq"), 0, timeout=3)
                   if m.key() == user.encode()]
        assert letters == [], "a valid event is never dead-lettered because the registry was down"
        assert "waiting" in p.log("worker").read_text() and "schema registry" in p.log("worker").read_text()
        stage.close()
    finally:
        p.stop()
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
