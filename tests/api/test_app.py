"""The query API over HTTP, against the real database: the unread count's answers and errors, as the contract says."""
from __future__ import annotations

import time
import uuid

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import auth
from api.app import create_app
from herald.settings import Settings
from infra import postgres
from sinks.inapp import InAppDeliverer

pytestmark = pytest.mark.integration

SECRET = "test-secret-" + "x" * 40


@pytest.fixture
async def client(stack, unique):
    await postgres.migrate_async()
    client = TestClient(TestServer(create_app(Settings.from_env(jwt_secret=SECRET, topic_prefix=f"{unique}."))))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def seeded(stack, unique):
    """Three unread notifications for ``<unique>-alice``."""
    await postgres.migrate_async()
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=2)
    user = f"{unique}-alice"
    await InAppDeliverer(pool)([{
        "delivery_id": f"{unique}-{i}", "user_id": user, "type": "COMMENT", "priority": "NORMAL", "kind": "SINGLE",
        "title": "t", "body": "b", "data": {"big": 2 ** 70} if i == 0 else {}, "event_ids": [uuid.uuid4().hex],
        "created_at": int(time.time() * 1000)} for i in range(3)])
    yield user
    await pool.execute("DELETE FROM notifications WHERE user_id LIKE $1", f"{unique}-%")
    await pool.execute("DELETE FROM unread_counts WHERE user_id LIKE $1", f"{unique}-%")
    await pool.close()


def bearer(user: str, admin: bool = False) -> dict:
    return {"Authorization": f"Bearer {auth.mint(SECRET, user, admin=admin)}"}


async def test_the_unread_count_follows_reads(client, seeded):
    r = await client.get(f"/v1/users/{seeded}/unread-count", headers=bearer(seeded))
    assert r.status == 200 and r.content_type == "application/json"
    assert await r.json() == {"user_id": seeded, "unread": 3, "unseen": 3}
    page = await (await client.get(f"/v1/users/{seeded}/notifications", headers=bearer(seeded))).json()
    assert {n["data"].get("big") for n in page["notifications"]} == {2 ** 70, None}  # wider than orjson writes
    one = page["notifications"][0]["notification_id"]
    r = await client.post(f"/v1/users/{seeded}/notifications/{one}/read", headers=bearer(seeded))
    assert await r.json() == {"user_id": seeded, "unread": 2, "unseen": 2}
    r = await client.post(f"/v1/users/{seeded}/notifications/read-all", headers=bearer(seeded))
    assert await r.json() == {"user_id": seeded, "unread": 0, "unseen": 0}


async def test_a_user_without_notifications_has_none_unread(client, unique):
    user = f"{unique}-nobody"
    r = await client.get(f"/v1/users/{user}/unread-count", headers=bearer(user))
    assert await r.json() == {"user_id": user, "unread": 0, "unseen": 0}


async def test_tokens_are_checked_on_every_request(client, seeded):
    path = f"/v1/users/{seeded}/unread-count"
    assert (await client.get(path, headers=bearer("ops", admin=True))).status == 200
    for _ in range(2):  # the second time the token's claims are remembered: still 403
        r = await client.get(path, headers=bearer("someone-else"))
        assert r.status == 403 and (await r.json())["error"]["code"] == "FORBIDDEN"
    r = await client.get(path)
    assert r.status == 401 and (await r.json())["error"]["code"] == "UNAUTHENTICATED"
    expired = jwt.encode({"sub": seeded, "exp": int(time.time()) - 1}, SECRET, algorithm="HS256")
    r = await client.get(path, headers={"Authorization": f"Bearer {expired}"})
    assert r.status == 401 and (await r.json())["error"]["code"] == "TOKEN_EXPIRED"


async def test_metrics_count_requests_by_route_and_status(client, seeded):
    await client.get(f"/v1/users/{seeded}/unread-count", headers=bearer(seeded))
    await client.get(f"/v1/users/{seeded}/unread-count")
    text = await (await client.get("/metrics")).text()
    assert 'herald_api_requests_total{route="/v1/users/{user_id}/unread-count",status="200"}' in text
    assert 'herald_api_requests_total{route="/v1/users/{user_id}/unread-count",status="401"}' in text
    assert 'herald_api_request_seconds_count{route="/v1/users/{user_id}/unread-count"}' in text
