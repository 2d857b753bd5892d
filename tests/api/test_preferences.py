"""Preferences, contacts, seen and archive over the real API, database and broker."""
from __future__ import annotations

import logging
import time
import uuid

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.preferences import defaults
from api.app import create_app
from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra import postgres
from sinks.inapp import InAppDeliverer
from tests.api.live import SECRET, aread_topic, bearer

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(stack, unique):
    await postgres.migrate_async()
    settings = Settings.from_env(jwt_secret=SECRET, topic_prefix=f"{unique}.", partitions=1)
    ensure_topics(settings)
    register_schemas(settings)
    return settings


@pytest.fixture
async def client(settings):
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def pool(stack, unique):
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=2)
    yield pool
    for table in ("notifications", "unread_counts", "user_preferences", "user_contacts"):
        await pool.execute(f"DELETE FROM {table} WHERE user_id LIKE $1", f"{unique}-%")
    await pool.close()


async def test_preferences_default_then_put_then_get_and_the_topic_has_them(client, settings, pool, unique):
    user = f"{unique}-ann"
    path = f"/v1/users/{user}/preferences"
    r = await client.get(path, headers=bearer(user))
    assert r.status == 200 and await r.json() == defaults(user)
    wanted = {"timezone": "Europe/Berlin", "channels": {"SMS": False}, "types": {"COMMENT": False},
              "minimum_priority": "NORMAL", "quiet_hours": {"start": "22:00", "end": "07:00"},
              "dnd": [{"day": 5, "start": "09:00", "end": "12:00"}], "digest_mode": "DAILY", "digest_time": "08:30",
              "batching": False, "max_batch_size": 10, "max_per_hour": 5, "updated_at": 1}
    before = int(time.time() * 1000)
    r = await client.put(path, json=wanted, headers=bearer(user))
    assert r.status == 200, await r.text()
    stored = await r.json()
    assert stored == {**defaults(user), **wanted, "updated_at": stored["updated_at"]}
    assert stored["updated_at"] >= before  # the server's time, not the body's
    assert await (await client.get(path, headers=bearer(user))).json() == stored
    # a second PUT replaces the whole document: what it leaves out is back to its default
    r = await client.put(path, json={"timezone": "America/New_York"}, headers=bearer(user))
    second = await r.json()
    assert second["quiet_hours"] is None and second["timezone"] == "America/New_York"
    assert second["updated_at"] > stored["updated_at"]
    assert await (await client.get(path, headers=bearer(user))).json() == second
    records = await aread_topic(settings, "preferences", lambda rs: len(rs) >= 2)
    assert [k for k, _ in records] == [user, user]
    assert records[0][1] == stored and records[1][1] == second


async def test_a_bad_put_names_every_bad_field_and_changes_nothing(client, pool, unique):
    user = f"{unique}-bob"
    path = f"/v1/users/{user}/preferences"
    bad = {"timezone": "Mars/Olympus_Mons", "max_batch_size": 0, "quiet_hours": {"start": "25:00", "end": "07:00"},
           "digest_time": "7pm", "minimum_priority": "URGENT", "dnd": [{"day": 9, "start": "09:00", "end": "10:00"}],
           "colour": "blue"}
    r = await client.put(path, json=bad, headers=bearer(user))
    assert r.status == 422
    err = (await r.json())["error"]
    assert err["code"] == "VALIDATION"
    assert set(err["fields"]) == {"timezone", "max_batch_size", "quiet_hours", "digest_time", "minimum_priority",
                                  "dnd", "colour"}
    assert "time zone" in err["fields"]["timezone"] and err["fields"]["colour"] == "unknown key"
    r = await client.put(path, json={"user_id": f"{unique}-other"}, headers=bearer(user))
    assert r.status == 422 and set((await r.json())["error"]["fields"]) == {"user_id"}
    for body, code in ((b"{not json", "BAD_JSON"), (b'{"timezone": "\\u0000"}', "BAD_JSON")):
        r = await client.put(path, data=body, headers={**bearer(user), "Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["error"]["code"] == code
    r = await client.put(path, json=[1, 2], headers=bearer(user))
    assert r.status == 422 and (await r.json())["error"]["fields"] == {"body": "must be a JSON object"}
    assert await (await client.get(path, headers=bearer(user))).json() == defaults(user)


async def test_contacts_are_validated_stored_and_never_logged(client, settings, pool, unique, caplog):
    caplog.set_level(logging.DEBUG)
    user = f"{unique}-cat"
    path = f"/v1/users/{user}/contacts"
    r = await client.get(path, headers=bearer(user))
    assert await r.json() == {"user_id": user, "email": None, "phone": None, "push_tokens": [], "locale": None,
                              "updated_at": 0}
    r = await client.put(path, json={"email": "not-an-address", "phone": "0170 1234567", "locale": "!!",
                                     "push_tokens": [""]}, headers=bearer(user))
    assert r.status == 422
    body = await r.text()
    assert set((await r.json())["error"]["fields"]) == {"email", "phone", "locale", "push_tokens"}
    assert "not-an-address" not in body and "1234567" not in body
    contact = {"email": "cat@example.org", "phone": "+4915112345678", "push_tokens": ["tok-1", "tok-1", "tok-2"],
               "locale": "de-DE"}
    r = await client.put(path, json=contact, headers=bearer(user))
    assert r.status == 200, await r.text()
    stored = await r.json()
    assert stored == {"user_id": user, **contact, "push_tokens": ["tok-1", "tok-2"], "updated_at": stored["updated_at"]}
    assert await (await client.get(path, headers=bearer(user))).json() == stored
    records = await aread_topic(settings, "contacts", lambda rs: len(rs) >= 1)
    assert records == [(user, stored)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cat@example.org" not in logged and "+4915112345678" not in logged and "tok-1" not in logged


async def test_seen_and_archive_move_the_counts_and_every_action_reaches_the_reads_topic(client, settings, pool, unique):
    user, other = f"{unique}-dan", f"{unique}-eve"
    await InAppDeliverer(pool)([{
        "delivery_id": f"{u}-{i}", "user_id": u, "type": "COMMENT", "priority": "NORMAL", "kind": "SINGLE",
        "title": "t", "body": "b", "data": {}, "event_ids": [uuid.uuid4().hex], "created_at": int(time.time() * 1000)}
        for u in (user, other) for i in range(4)])
    base = f"/v1/users/{user}/notifications"
    h = bearer(user)
    r = await client.post(f"{base}/{user}-0/seen", headers=h)
    assert await r.json() == {"user_id": user, "unread": 4, "unseen": 3}
    r = await client.post(f"{base}/{user}-0/seen", headers=h)  # twice: once
    assert await r.json() == {"user_id": user, "unread": 4, "unseen": 3}
    r = await client.post(f"{base}/{user}-1/archive", headers=h)
    assert await r.json() == {"user_id": user, "unread": 3, "unseen": 2}
    page = await (await client.get(base, headers=h)).json()
    assert {n["notification_id"] for n in page["notifications"]} == {f"{user}-0", f"{user}-2", f"{user}-3"}
    assert next(n for n in page["notifications"] if n["notification_id"] == f"{user}-0")["seen"] is True
    r = await client.post(f"{base}/{user}-2/read", headers=h)
    assert await r.json() == {"user_id": user, "unread": 2, "unseen": 1}
    for action in ("seen", "archive", "read"):  # another user's notification is not found through this path
        r = await client.post(f"{base}/{other}-0/{action}", headers=h)
        assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"
    r = await client.post(f"{base}/read-all", headers=h)
    assert await r.json() == {"user_id": user, "unread": 0, "unseen": 0}
    assert (await (await client.get(f"/v1/users/{other}/unread-count", headers=bearer(other))).json())["unread"] == 4
    records = await aread_topic(settings, "reads", lambda rs: len(rs) >= 5)
    assert [(k, v["action"], v["notification_id"]) for k, v in records] == [
        (user, "SEEN", f"{user}-0"), (user, "SEEN", f"{user}-0"), (user, "ARCHIVED", f"{user}-1"),
        (user, "READ", f"{user}-2"), (user, "READ_ALL", None)]


ROUTES = [("GET", "unread-count"), ("GET", "notifications"), ("POST", "notifications/read-all"),
          ("POST", "notifications/n1/read"), ("POST", "notifications/n1/seen"), ("POST", "notifications/n1/archive"),
          ("GET", "preferences"), ("PUT", "preferences"), ("GET", "contacts"), ("PUT", "contacts"), ("GET", "stream")]


@pytest.mark.parametrize("method, route", ROUTES)
async def test_no_user_can_read_or_change_another_users_data(client, pool, unique, method, route):
    victim, mallory = f"{unique}-victim", f"{unique}-mallory"
    path = f"/v1/users/{victim}/{route}"
    body = {} if method == "PUT" else None
    for headers, status, code in ((bearer(mallory), 403, "FORBIDDEN"), ({}, 401, "UNAUTHENTICATED"),
                                  ({"Authorization": "Bearer x.y.z"}, 401, "INVALID_TOKEN")):
        r = await client.request(method, path, headers=headers, json=body)
        assert r.status == status and (await r.json())["error"]["code"] == code, (method, route, headers)
    assert await pool.fetchval("SELECT count(*) FROM user_preferences WHERE user_id = $1", victim) == 0
    assert await pool.fetchval("SELECT count(*) FROM user_contacts WHERE user_id = $1", victim) == 0
