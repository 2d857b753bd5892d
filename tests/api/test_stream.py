"""The WebSocket stream against the real database and broker: what is refused before the upgrade, the
frames a user sees whatever changed the inbox, WebSocket deliveries and their statuses, presence, slow
clients, and fan-out to every socket of a user across `herald api`'s processes."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import asyncpg
import pytest
import websockets
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.http import HUB
from herald.kafka import make_producer
from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra import postgres
from infra.common import REPO_ROOT
from schemas.codec import Codec
from schemas.registry import Registry
from sinks.inapp import InAppDeliverer
from tests.api.live import SECRET, aread_topic, bearer
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ORIGIN = "http://inbox.example.test"


@pytest.fixture
async def settings(stack, unique):
    await postgres.migrate_async()
    settings = Settings.from_env(jwt_secret=SECRET, topic_prefix=f"{unique}.", partitions=1, allowed_origins=ORIGIN,
                                 presence_ttl_s=30)
    ensure_topics(settings)
    register_schemas(settings)
    return settings


@pytest.fixture
async def client(settings):
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    await asyncio.wait_for(client.app[HUB].listening.wait(), 30)
    yield client
    await client.close()


@pytest.fixture
async def pool(stack, unique):
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=2)
    yield pool
    for table in ("notifications", "unread_counts", "api_sockets"):
        await pool.execute(f"DELETE FROM {table} WHERE user_id LIKE $1", f"{unique}-%")
    await pool.close()


def request(user: str, delivery_id: str | None = None, title: str = "t", channel: str = "INAPP") -> dict:
    return {"delivery_id": delivery_id or f"{user}-{uuid.uuid4().hex[:8]}", "user_id": user, "channel": channel,
            "type": "COMMENT", "priority": "HIGH", "kind": "SINGLE", "title": title, "body": "<b>not html</b>",
            "data": {"k": "v"}, "event_ids": [uuid.uuid4().hex], "created_at": int(time.time() * 1000)}


def produce_websocket(settings: Settings, requests: list[dict]) -> None:
    codec = Codec(Registry(settings.schema_registry_url))
    producer = make_producer(settings.kafka_bootstrap)
    topic = settings.topic("delivery.websocket")
    for r in requests:
        producer.produce(topic, codec.encode(f"{topic}-value", "DeliveryRequest", r), r["user_id"].encode())
    assert producer.flush(10) == 0


async def frame(ws, timeout: float = 20) -> dict:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def frames_until(ws, done, timeout: float = 30) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        got.append(await frame(ws, max(0.1, deadline - time.monotonic())))
    return got


async def test_refused_before_the_upgrade(client, unique):
    user = f"{unique}-ann"
    path = f"/v1/users/{user}/stream"
    cases = [
        ({**bearer(user), "Origin": "http://evil.example"}, 403, "ORIGIN_NOT_ALLOWED"),
        ({"Origin": ORIGIN}, 401, "UNAUTHENTICATED"),
        ({**bearer(f"{unique}-mallory"), "Origin": ORIGIN}, 403, "FORBIDDEN"),
        ({"Authorization": "Bearer not-a-token"}, 401, "INVALID_TOKEN"),
    ]
    for headers, status, code in cases:
        with pytest.raises(Exception) as info:
            await client.ws_connect(path, headers=headers)
        assert getattr(info.value, "status", None) == status, (headers, info.value)
        r = await client.get(path, headers={**headers, "Connection": "Upgrade", "Upgrade": "websocket",
                                            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert r.status == status and (await r.json())["error"]["code"] == code
    with pytest.raises(Exception) as info:  # the query token of another user
        await client.ws_connect(f"{path}?access_token={bearer(f'{unique}-mallory')['Authorization'][7:]}")
    assert info.value.status == 403
    r = await client.get(path, headers=bearer(user))  # a plain GET with a good token
    assert r.status == 426 and (await r.json())["error"]["code"] == "UPGRADE_REQUIRED"
    assert not client.app[HUB].local


async def test_frames_follow_every_change_of_the_inbox(client, settings, pool, unique):
    user, admin = f"{unique}-bob", bearer("ops", admin=True)
    deliver = InAppDeliverer(pool)
    await deliver([request(user, f"{user}-old")])
    ws = await client.ws_connect(f"/v1/users/{user}/stream?access_token={bearer(user)['Authorization'][7:]}",
                                 headers={"Origin": ORIGIN})
    assert await frame(ws) == {"type": "unread", "unread": 1, "unseen": 1}
    await deliver([request(user, f"{user}-new", title="hello")])  # the in-app sink's own insert
    got = await frames_until(ws, lambda fs: len(fs) >= 2)
    assert got[0]["type"] == "notification" and got[0]["notification"]["notification_id"] == f"{user}-new"
    assert got[0]["notification"]["title"] == "hello" and got[0]["notification"]["body"] == "<b>not html</b>"
    assert got[1] == {"type": "unread", "unread": 2, "unseen": 2}
    base = f"/v1/users/{user}/notifications"
    for path, counts in ((f"{base}/{user}-old/seen", (2, 1)), (f"{base}/{user}-old/read", (1, 1)),
                         (f"{base}/{user}-new/archive", (0, 0))):
        assert (await client.post(path, headers=admin)).status == 200
        assert await frame(ws) == {"type": "unread", "unread": counts[0], "unseen": counts[1]}
    await deliver([request(user, f"{user}-3"), request(user, f"{user}-4")])
    got = await frames_until(ws, lambda fs: fs and fs[-1] == {"type": "unread", "unread": 2, "unseen": 2})
    assert [f["notification"]["notification_id"] for f in got if f["type"] == "notification"] == [f"{user}-3", f"{user}-4"]
    assert (await client.post(f"{base}/read-all", headers=bearer(user))).status == 200
    assert await frame(ws) == {"type": "unread", "unread": 0, "unseen": 0}
    # an operator's SQL changes the counts too
    await pool.execute("UPDATE notifications SET read_at = NULL WHERE notification_id = $1", f"{user}-3")
    assert await frame(ws) == {"type": "unread", "unread": 1, "unseen": 0}
    connection_id = await pool.fetchval("SELECT connection_id FROM api_sockets WHERE user_id = $1", user)
    await ws.close()
    deadline = time.monotonic() + 15
    while await pool.fetchval("SELECT count(*) FROM api_sockets WHERE user_id = $1", user) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await pool.fetchval("SELECT count(*) FROM api_sockets WHERE user_id = $1", user) == 0
    presence = await aread_topic(settings, "presence", lambda rs: len(rs) >= 2)
    assert [(k, v["online"], v["connection_id"]) for k, v in presence] == [(user, True, connection_id),
                                                                          (user, False, connection_id)]
    assert presence[0][1]["expires_at"] - presence[0][1]["at"] == 30_000


async def test_websocket_deliveries_reach_open_sockets_and_have_statuses(client, settings, pool, unique):
    user, nobody = f"{unique}-cat", f"{unique}-nobody"
    hub = client.app[HUB]
    sockets = [await client.ws_connect(f"/v1/users/{user}/stream", headers=bearer(user)) for _ in range(2)]
    for ws in sockets:
        assert (await frame(ws))["type"] == "unread"
    await asyncio.wait_for(hub.consuming.wait(), 60)
    sent, suppressed = request(user, f"{unique}-ws-1", channel="WEBSOCKET"), request(nobody, f"{unique}-ws-2", channel="WEBSOCKET")
    stale = {**request(user, f"{unique}-ws-3", channel="WEBSOCKET"), "created_at": int(time.time() * 1000) - 3_600_000}
    produce_websocket(settings, [suppressed, stale, sent])
    for ws in sockets:
        f = await frame(ws, 60)
        assert f["type"] == "notification" and f["notification"]["notification_id"] == f"{unique}-ws-1"
        assert f["notification"]["channel"] == "WEBSOCKET" and f["notification"]["read"] is False
    statuses = await aread_topic(settings, "delivery.status", lambda rs: len(rs) >= 3)
    assert {k: (v["status"], v["channel"]) for k, v in statuses} == {
        f"{unique}-ws-1": ("SENT", "WEBSOCKET"), f"{unique}-ws-2": ("SUPPRESSED", "WEBSOCKET"),
        f"{unique}-ws-3": ("SUPPRESSED", "WEBSOCKET")}
    for ws in sockets:
        await ws.close()


async def test_a_client_that_does_not_read_is_dropped(client, pool, unique):
    user = f"{unique}-slow"
    hub = client.app[HUB]
    sock = socket.create_connection((client.host, client.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"GET /v1/users/{user}/stream HTTP/1.1\r\nHost: {client.host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Authorization: {bearer(user)['Authorization']}\r\n\r\n").encode())
    deadline = time.monotonic() + 10
    while user not in hub.local and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    slow = next(iter(hub.local[user]))
    big = json.dumps({"type": "notification", "notification": {"body": "x" * 60_000}})
    deadline = time.monotonic() + 60
    while not slow.dropped and time.monotonic() < deadline:  # never read by the peer: the transport fills, then the queue
        for _ in range(50):
            hub.broadcast(user, big)
        await asyncio.sleep(0.01)
    assert slow.dropped
    deadline = time.monotonic() + 30
    while user in hub.local and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert user not in hub.local  # gone from the hub: frames for the user cost nothing now
    sock.close()


def _get(port: int, path: str, method: str = "GET", token: str | None = None) -> dict:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def api_processes(settings, tmp_path):
    """`herald api` with two worker processes on this test's topics."""
    proc, port, log = start_api(settings, tmp_path)
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def start_api(settings: Settings, tmp_path) -> tuple[subprocess.Popen, int, "os.PathLike"]:
    port = free_port()
    env = {**os.environ, "HERALD_API_PORT": str(port), "HERALD_JWT_SECRET": SECRET, "HERALD_API_WORKERS": "2",
           "HERALD_TOPIC_PREFIX": settings.topic_prefix, "HERALD_ALLOWED_ORIGINS": ORIGIN}
    log = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(port, "/readyz")
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    time.sleep(1.5)  # the second process may still be starting
    return proc, port, log


async def test_a_stopping_api_closes_its_sockets_as_going_away(settings, unique, tmp_path):
    """SIGTERM closes every open socket with 1001, so the page reconnects at once and the processes stop
    without waiting out aiohttp's shutdown timeout for the sockets' handlers."""
    proc, port, log = start_api(settings, tmp_path)
    user = f"{unique}-away"
    try:
        sockets = []
        for _ in range(4):  # new connections: the kernel spreads them over both processes
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/users/{user}/stream",
                                          additional_headers=bearer(user))
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "unread"
            sockets.append(ws)
        proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)  # aiohttp would hold them open 60 s
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_every_socket_of_a_user_gets_every_frame_whichever_process_holds_it(api_processes, settings, pool, unique):
    port, user = api_processes, f"{unique}-dan"
    token = bearer(user)["Authorization"][7:]
    sockets = []
    for _ in range(8):  # new connections: the kernel spreads them over both processes
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/users/{user}/stream",
                                      additional_headers={"Authorization": f"Bearer {token}"})
        sockets.append(ws)
        assert json.loads(await asyncio.wait_for(ws.recv(), 20)) == {"type": "unread", "unread": 0, "unseen": 0}
    processes = await pool.fetchval("SELECT count(DISTINCT process) FROM api_sockets WHERE user_id = $1", user)
    assert await pool.fetchval("SELECT count(*) FROM api_sockets WHERE user_id = $1", user) == 8
    await InAppDeliverer(pool)([request(user, f"{user}-1")])
    produce_websocket(settings, [request(user, f"{unique}-live", channel="WEBSOCKET")])
    for ws in sockets:
        got = []
        while len(got) < 3:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        ids = sorted(f["notification"]["notification_id"] for f in got if f["type"] == "notification")
        assert ids == sorted([f"{user}-1", f"{unique}-live"]), got
        assert {"type": "unread", "unread": 1, "unseen": 1} in got
    _get(port, f"/v1/users/{user}/notifications/read-all", "POST", token)
    for ws in sockets:
        assert json.loads(await asyncio.wait_for(ws.recv(), 20)) == {"type": "unread", "unread": 0, "unseen": 0}
    statuses = await aread_topic(settings, "delivery.status", lambda rs: len(rs) >= 1)
    assert [(k, v["status"]) for k, v in statuses] == [(f"{unique}-live", "SENT")]
    for ws in sockets:
        await ws.close()
    assert processes == 2, "the sockets all landed in one process; the cross-process path went untested"


async def test_a_get_right_after_a_put_returns_it_from_any_process(api_processes, unique):
    port, user = api_processes, f"{unique}-rw"
    token = bearer(user)["Authorization"][7:]
    zones = ["Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo", "UTC"]
    for i in range(24):  # each request on a new connection: the kernel picks the process
        body = json.dumps({"timezone": zones[i % 4], "quiet_hours": {"start": f"{i:02d}:00", "end": "07:00"}}).encode()
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/users/{user}/preferences", data=body, method="PUT",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            written = json.loads(r.read())
        assert _get(port, f"/v1/users/{user}/preferences", token=token) == written
        assert written["quiet_hours"]["start"] == f"{i:02d}:00"


async def test_an_open_socket_renews_its_presence_and_row(settings, pool, unique):
    short = Settings.from_env(jwt_secret=SECRET, topic_prefix=settings.topic_prefix, presence_ttl_s=3)
    client = TestClient(TestServer(create_app(short)))
    await client.start_server()
    user = f"{unique}-renew"
    try:
        ws = await client.ws_connect(f"/v1/users/{user}/stream", headers=bearer(user))
        assert (await frame(ws))["type"] == "unread"
        first = await pool.fetchval("SELECT expires_at FROM api_sockets WHERE user_id = $1", user)
        presence = await aread_topic(settings, "presence", lambda rs: len(rs) >= 3, timeout=30)
        assert [online for _, online in ((k, v["online"]) for k, v in presence)][:3] == [True, True, True]
        assert len({v["connection_id"] for _, v in presence}) == 1
        assert await pool.fetchval("SELECT expires_at FROM api_sockets WHERE user_id = $1", user) > first
        await ws.close()
    finally:
        await client.close()
