"""The registry client against real servers: the Apicurio test registry (found, missing, registering), and
a real local HTTP server speaking the ccompat API's ``GET /schemas/ids/{id}`` that this test can make
fail (503), hang or count requests on, to prove what an outage does."""
from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
from collections import Counter

import pytest
from aiohttp import web

from schemas.codec import Codec, DecodeError
from schemas.loader import schema_text
from schemas.registry import Registry, RegistryUnavailable

pytestmark = pytest.mark.integration

EVENT = {"event_id": "e", "user_id": "u", "type": "T", "priority": "LOW", "title": "t", "body": "b", "data": {},
         "occurred_at": 1_700_000_000_000}


def framed(codec: Codec, schema_id: int) -> bytes:
    """``EVENT`` in the wire format, claimed to be written with ``schema_id``."""
    data = codec.encode("local-value", "NotificationEvent", EVENT)
    return b"\x00" + struct.pack(">I", schema_id) + data[5:]


# -- (a) the real Apicurio test registry ---------------------------------------------------------------


def test_processes_registering_the_same_new_subjects_at_once_all_succeed(stack, unique):
    # Workers started together on new topics register the same output subjects at the same moment;
    # Apicurio answers 409 to all but one of the racing compatibility PUTs.
    url = os.environ["HERALD_SCHEMA_REGISTRY_URL"]
    subjects = [(f"{unique}.race{n}-value", "DeliveryRequest") for n in range(3)]
    results: list = []

    def register() -> None:
        try:
            results.append(Registry(url).register_all(subjects))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len(results) == 8 and all(r == results[0] for r in results)  # one id per subject, the same for all


async def test_a_registered_id_is_found_and_an_unknown_one_is_schema_not_found(stack, unique):
    url = os.environ["HERALD_SCHEMA_REGISTRY_URL"]
    subject = f"{unique}.events-value"
    ids = await asyncio.to_thread(Registry(url).register_all, [(subject, "NotificationEvent"),
                                                               (f"{unique}.decisions-value", "Decision")])
    assert set(ids) == {subject, f"{unique}.decisions-value"} and len(set(ids.values())) == 2
    data = Codec(Registry(url)).encode(subject, "NotificationEvent", EVENT)

    registry = Registry(url, missing_retries=1, missing_backoff_s=0.05)  # a fresh cache: it must ask
    codec = Codec(registry)
    assert not registry.cached(ids[subject])
    await codec.prepare(data)
    assert registry.cached(ids[subject])
    assert codec.decode(data, "NotificationEvent")["user_id"] == "u"

    fresh = Codec(Registry(url, missing_retries=1, missing_backoff_s=0.05))
    assert fresh.head(data) is None  # not cached, and not asked
    assert await asyncio.to_thread(fresh.head, data, True) == ("u", "LOW")  # asked, from a thread of its own
    assert fresh.registry.cached(ids[subject])
    fresh.registry.close()

    unknown = 2_000_000_000 + random.randrange(100_000_000)
    await registry.ensure(unknown)  # returns: an unknown id is the record's problem, which decode tells
    assert registry.cached(unknown) and registry.missing_count() == 1
    with pytest.raises(DecodeError) as info:
        codec.decode(framed(codec, unknown), "NotificationEvent")
    assert info.value.reason == "SCHEMA_NOT_FOUND"
    registry.close()


def test_registering_at_a_url_that_is_not_the_ccompat_api_says_so(stack, unique):
    base = os.environ["HERALD_SCHEMA_REGISTRY_URL"].split("/apis/")[0]
    with pytest.raises(RegistryUnavailable) as info:
        Registry(f"{base}/not-the-api").register_all([(f"{unique}.events-value", "NotificationEvent")])
    assert "HTTP 404" in str(info.value) and "/apis/ccompat/v7" in str(info.value)


# -- (b) a local ccompat server this test controls -------------------------------------------------------


class FakeRegistry:
    """A real HTTP server on 127.0.0.1 answering ``GET /schemas/ids/{id}``: the schemas in ``known``, a
    ccompat 404 (code 40403) for any other id; ``fail[id]`` more 503 answers first; while ``gate`` is
    set for an id, its answer waits for that event. Every request is counted in ``requests``. Any write
    (registering) answers 503."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}
        self.fail: Counter = Counter()
        self.gate: dict[int, asyncio.Event] = {}
        self.seen: dict[int, asyncio.Event] = {}
        self.requests: Counter = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> "FakeRegistry":
        app = web.Application()
        app.router.add_get("/apis/ccompat/v7/schemas/ids/{id}", self.schema_by_id)
        app.router.add_route("*", "/{tail:.*}", self.unavailable)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def schema_by_id(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        self.requests[schema_id] += 1
        if schema_id in self.seen:
            self.seen[schema_id].set()
        if schema_id in self.gate:
            await self.gate[schema_id].wait()
        if self.fail[schema_id] > 0:
            self.fail[schema_id] -= 1
            return web.json_response({"error_code": 50301, "message": "Service Unavailable"}, status=503)
        if schema_id in self.known:
            return web.json_response({"schema": self.known[schema_id]})
        return web.json_response({"error_code": 40403, "message": f"Schema {schema_id} not found."}, status=404)

    async def unavailable(self, request: web.Request) -> web.Response:
        return web.json_response({"error_code": 50301, "message": "Service Unavailable"}, status=503)


@pytest.fixture
async def fake():
    server = await FakeRegistry().start()
    yield server
    await server.stop()


def local_codec(url: str, **kwargs) -> Codec:
    """A codec on ``url`` whose requests time out only after a long while: these tests count requests,
    and a busy test machine must not turn a slow answer into a timeout and a retry."""
    registry = Registry(url, missing_retries=0, **{"timeout_s": 30.0, **kwargs})
    registry._ids[("local-value", "NotificationEvent")] = 1  # encode without registering
    return Codec(registry)


async def test_a_503_is_unavailable_never_a_decode_error_and_is_retried_until_the_schema_comes(fake):
    fake.known[21] = schema_text("NotificationEvent")
    fake.fail[21] = 4
    codec = local_codec(fake.url, http_retries=1)
    registry = codec.registry
    data = framed(codec, 21)

    with pytest.raises(RegistryUnavailable) as info:
        await codec.prepare(data)
    assert info.value.status == 503 and fake.requests[21] == 2  # the client's one retry
    assert not registry.cached(21) and registry.missing_count() == 0

    # a decode that has to ask (in a thread here: the server shares this loop) lets the outage through
    with pytest.raises(RegistryUnavailable):
        await asyncio.to_thread(codec.decode, data, "NotificationEvent")
    assert fake.requests[21] == 4 and registry.missing_count() == 0

    fake.fail[21] = 2
    with pytest.raises(RegistryUnavailable):  # so the lane's reader can stop asking for a while
        await asyncio.to_thread(codec.head, data, True)
    assert fake.requests[21] == 6 and not registry.cached(21) and codec.head(data) is None

    await codec.prepare(data)  # the registry is back
    assert fake.requests[21] == 7
    for _ in range(3):
        assert codec.decode(data, "NotificationEvent")["user_id"] == "u"
    assert codec.head(data) == ("u", "LOW")
    await codec.prepare(data)
    assert fake.requests[21] == 7  # answered from the cache from now on
    registry.close()


async def test_a_look_up_does_not_block_the_loop(fake):
    """The server answers only after another task on this loop has ticked 50 times while the look-up
    waits: a look-up that held the loop would never get its answer (it would time out, unavailable)."""
    fake.known[22] = schema_text("NotificationEvent")
    fake.gate[22], fake.seen[22] = asyncio.Event(), asyncio.Event()
    codec = local_codec(fake.url, http_retries=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        await fake.seen[22].wait()
        while ticks < 50:
            ticks += 1
            await asyncio.sleep(0)
        fake.gate[22].set()

    ticking = asyncio.create_task(ticker())
    await codec.prepare(framed(codec, 22))
    await ticking
    assert ticks == 50 and codec.registry.cached(22) and fake.requests[22] == 1
    codec.registry.close()


async def test_concurrent_look_ups_of_one_id_share_one_request(fake):
    fake.known[23] = schema_text("NotificationEvent")
    fake.gate[23] = asyncio.Event()
    fake.fail[24] = 10
    fake.gate[24] = asyncio.Event()
    registry = local_codec(fake.url, http_retries=1).registry

    found = asyncio.gather(*(registry.ensure(23) for _ in range(100)))
    down = asyncio.gather(*(registry.ensure(24) for _ in range(100)), return_exceptions=True)
    await asyncio.sleep(0)
    assert set(registry._inflight) == {23, 24}
    fake.gate[23].set()
    fake.gate[24].set()
    assert await found == [None] * 100
    outcomes = await down
    assert all(isinstance(o, RegistryUnavailable) for o in outcomes)
    assert fake.requests[23] == 1 and fake.requests[24] == 2  # one look-up each (24: with its one retry)
    assert registry._inflight == {} and registry.cached(23) and not registry.cached(24)
    registry.close()


async def test_cancelling_one_waiter_does_not_cancel_the_look_up_for_the_others(fake):
    fake.known[25] = schema_text("NotificationEvent")
    fake.gate[25], fake.seen[25] = asyncio.Event(), asyncio.Event()
    registry = local_codec(fake.url, http_retries=0).registry
    first = asyncio.create_task(registry.ensure(25))
    second = asyncio.create_task(registry.ensure(25))
    await fake.seen[25].wait()
    first.cancel()
    fake.gate[25].set()
    await second
    assert first.cancelled() and registry.cached(25) and fake.requests[25] == 1
    registry.close()


async def test_a_flood_of_unknown_ids_costs_one_request_each_and_bounded_memory(fake):
    codec = local_codec(fake.url, max_missing=1000, http_retries=0)
    registry = codec.registry
    ids = list(range(100_000, 105_000))
    records = [framed(codec, i) for i in ids]
    await asyncio.gather(*(codec.prepare(data) for data in records))
    assert sum(fake.requests.values()) == 5000 and set(fake.requests.values()) == {1}
    kept = list(registry._missing)
    assert registry.missing_count() == 1000 and set(kept) < set(ids)  # look-ups finish in any order

    # the remembered ones cost nothing more and decode as SCHEMA_NOT_FOUND; a forgotten one is asked again
    await asyncio.gather(*(registry.ensure(i) for i in kept))
    assert sum(fake.requests.values()) == 5000
    with pytest.raises(DecodeError) as info:
        codec.decode(framed(codec, kept[-1]), "NotificationEvent")
    assert info.value.reason == "SCHEMA_NOT_FOUND"
    forgotten = next(i for i in ids if i not in set(kept))
    await registry.ensure(forgotten)
    assert fake.requests[forgotten] == 2 and registry.missing_count() == 1000
    registry.close()


async def test_registering_while_the_registry_answers_503_is_unavailable(fake):
    codec = Codec(Registry(fake.url, http_retries=0))
    with pytest.raises(RegistryUnavailable) as info:
        await asyncio.to_thread(codec.encode, "x-value", "Decision", {})
    assert info.value.status == 503
    with pytest.raises(RegistryUnavailable) as info:
        await asyncio.to_thread(codec.registry.register_all, [("x-value", "Decision")])
    assert "cannot register the output schemas (1 of 1 left, starting with x-value)" in str(info.value)
