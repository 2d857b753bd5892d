"""GET /v1/users/{user_id}/stream: the WebSocket of live notifications and unread counts, and its fan-out.

Before the upgrade (answered in the contract's JSON error shape, so no frame ever flows):
- an ``Origin`` header must be one of ``HERALD_ALLOWED_ORIGINS`` (default: the API's own origin,
  ``http://127.0.0.1:<port>`` and ``http://localhost:<port>``), else 403 ``ORIGIN_NOT_ALLOWED``. Browsers
  always send one on a WebSocket; a client without one (a server, a test tool) is not a browser page
  another site could script, so it is let through to the token check;
- the token, from ``Authorization: Bearer`` or ``?access_token=``, must act for the path's user (the same
  user/admin rule as every route): 401 / 403 otherwise;
- a request that is not a WebSocket upgrade is 426 ``UPGRADE_REQUIRED``.

Frames (text, JSON): ``{"type": "unread", "unread": N, "unseen": N}`` on connect and after every change
of the counts, whoever made it (the in-app sink, a read, read-all, seen or archive on any API process,
an operator's SQL); ``{"type": "notification", "notification": {...}}`` for each new in-app row (the inbox
item, as the list shows it) and each WebSocket delivery (the same shape, its ``notification_id`` the
``delivery_id``). A ping every ``PING_S`` seconds; a peer that does not answer it is closed. Frames sent by
the client are ignored. Each socket has a queue of at most ``QUEUE_MAX`` frames: a client too slow to take
them is closed with 1008 (its writer abandoned if the close itself cannot be sent in ``CLOSE_WAIT_S``). A
stopping process closes its sockets with 1001 ("server shutting down"); the inbox page reconnects, and on
each connect reads the newest page of the list again, since a row inserted while it had no socket was
pushed to nobody.

Presence: connect writes ``herald.presence`` online with ``expires_at`` = now + ``HERALD_PRESENCE_TTL_S``,
renewed every third of that while open (a slice of the sockets each second); disconnect writes offline.
Each open socket is also a row of ``api_sockets`` (migration 004), renewed alike; rows of a process killed
outright expire and are swept.

Fan-out across ``herald api``'s processes (a user's sockets may sit in several):
- In-app rows and counts: PostgreSQL LISTEN/NOTIFY. Triggers (migration 004) notify ``herald_inbox`` and
  ``herald_unread`` at commit, only for users with a row in ``api_sockets``; every API process listens on
  one connection of its own and acts only for the users it holds. The counts come in the message; new
  rows are read in one query per burst. The triggers see every writer, which the API's own requests
  alone would not (the sink inserts), and no broker consumer per process is needed for them.
- ``herald.delivery.websocket``: the API consumes it itself, so no ``herald sink websocket`` process is
  needed. The API processes share one consumer group (``<prefix>api-websocket``): each record is handled
  once, by one process, which sends it to its own sockets of that user and, in one query per batch,
  NOTIFYs ``herald_ws`` for users with sockets in other processes (found in ``api_sockets``); it writes one
  ``herald.delivery.status`` per record: SENT when a frame went to at least one socket (here or through
  another process), SUPPRESSED when the user had none. Offsets are committed after the statuses are
  acknowledged (at least once: a crash may send a frame twice). A record older than ``STALE_S`` (read
  after an outage) is SUPPRESSED, not shown as new. One group with per-process consumers of every
  record would cost each process a decode per delivery and leave no single owner for SUPPRESSED.
A user with no open socket costs an index probe in the triggers and a dict look-up per delivery: no
message, no query of its own.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timezone

import asyncpg
import orjson
from aiohttp import WSMsgType, web

from api import store
from api.http import HUB, POOL, SETTINGS, VERIFIER, ApiError
from herald.settings import Settings

log = logging.getLogger("herald.api.stream")

PING_S = 20.0
QUEUE_MAX = 256
CLOSE_SLOW = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_WAIT_S = 2.0
STALE_S = 300
NOTIFY_MAX = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more


def allowed_origins(settings: Settings) -> frozenset[str]:
    if settings.allowed_origins.strip():
        return frozenset(o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip())
    return frozenset({f"http://127.0.0.1:{settings.api_port}", f"http://localhost:{settings.api_port}"})


def unread_frame(unread: int, unseen: int) -> str:
    return orjson.dumps({"type": "unread", "unread": unread, "unseen": unseen}).decode()


def notification_frame(item: dict) -> str:
    return orjson.dumps({"type": "notification", "notification": item}).decode()


def delivery_item(request: dict) -> dict:
    """A WebSocket ``DeliveryRequest`` as an inbox item."""
    created = request["created_at"]
    if not isinstance(created, datetime):
        created = datetime.fromtimestamp(created / 1000, tz=timezone.utc)
    return {"notification_id": request["delivery_id"], "type": request["type"], "priority": request["priority"],
            "kind": request["kind"], "title": request["title"], "body": request["body"],
            "data": request.get("data") or {}, "event_ids": list(request["event_ids"]),
            "created_at": created.isoformat(), "read": False, "seen": False, "channel": "WEBSOCKET"}


class Client:
    """One open socket: a bounded queue of frames and the task that writes them."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, user_id: str) -> None:
        self.ws, self.transport, self.user_id = ws, request.transport, user_id
        self.connection_id = uuid.uuid4().hex
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_MAX)
        self.dropped = False
        self.handler = asyncio.current_task()
        self.writer = asyncio.ensure_future(self._write())

    def offer(self, frame: str) -> bool:
        """Queue ``frame``; a full queue drops the client. False when it was not queued."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.drop()
            return False

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            self.writer.cancel()
            asyncio.ensure_future(self._close_slow())

    async def _write(self) -> None:
        while True:
            frame = await self.queue.get()
            await self.ws.send_str(frame)

    async def _close_slow(self) -> None:
        await self.close_with(CLOSE_SLOW, b"too slow: frames not taken")

    async def close_with(self, code: int, message: bytes) -> None:
        """Close the socket with ``code``, at most ``CLOSE_WAIT_S`` waiting for the peer, then end the handler."""
        self.writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:  # closed or not, the connection goes: a peer that does not read may not answer the close either
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()
            if self.handler is not None:  # its read may never learn of the abort; it cleans up when cancelled
                self.handler.cancel()

    async def close(self) -> None:
        self.writer.cancel()
        try:
            await self.writer
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass


async def stream(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    user_id = request.match_info["user_id"]
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") not in allowed_origins(settings):
        raise ApiError(403, "ORIGIN_NOT_ALLOWED", "this origin may not open the stream (HERALD_ALLOWED_ORIGINS)")
    header = request.headers.get("Authorization")
    if header is None and request.query.get("access_token"):
        request.app[VERIFIER].authorize_token(request.query["access_token"], user_id)
    else:
        request.app[VERIFIER].authorize(header, user_id)
    ws = web.WebSocketResponse(heartbeat=PING_S, max_msg_size=4096, compress=False)
    if request.headers.get("Upgrade", "").lower() != "websocket" or not ws.can_prepare(request).ok:
        raise ApiError(426, "UPGRADE_REQUIRED", "open this path as a WebSocket (Upgrade: websocket)")
    await ws.prepare(request)
    hub: Hub = request.app[HUB]
    client = Client(ws, request, user_id)
    try:
        await hub.add(client)
        counts = await store.unread_count(request.app[POOL], user_id)
        client.offer(unread_frame(counts["unread"], counts["unseen"]))
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        # aiohttp cancels the handler when the peer goes away; the clean-up must still run to its end
        cleanup = asyncio.ensure_future(hub.remove(client))
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            pass
        await client.close()
        if not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), CLOSE_WAIT_S)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
    return ws


class Hub:
    """This process's open sockets by user, and the fan-out tasks that feed them (see the module's doc)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, outbox, codec) -> None:
        self.settings, self.pool, self.outbox, self.codec = settings, pool, outbox, codec
        self.process = uuid.uuid4().hex
        self.local: dict[str, set[Client]] = {}
        self.events: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.listening = asyncio.Event()
        self.consuming = asyncio.Event()
        self._stop = False
        self.consumer = None

    # sockets

    async def add(self, client: Client) -> None:
        self.local.setdefault(client.user_id, set()).add(client)
        await self.pool.execute(
            "INSERT INTO api_sockets (connection_id, user_id, process, expires_at) "
            "VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            client.connection_id, client.user_id, self.process, float(self.settings.presence_ttl_s))
        await self._presence(client, online=True)

    async def remove(self, client: Client) -> None:
        clients = self.local.get(client.user_id)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.local[client.user_id]
        try:
            await self.pool.execute("DELETE FROM api_sockets WHERE connection_id = $1", client.connection_id)
            await self._presence(client, online=False)
        except Exception:  # noqa: BLE001 - the row expires anyway; a closing socket must not fail the handler
            log.warning("could not record a disconnect", exc_info=True)

    async def _presence(self, client: Client, online: bool) -> None:
        now = int(time.time() * 1000)
        await self.outbox.publish("presence", "Presence", client.user_id, {
            "user_id": client.user_id, "online": online, "connection_id": client.connection_id, "at": now,
            "expires_at": now + self.settings.presence_ttl_s * 1000 if online else now})

    def broadcast(self, user_id: str, frame: str) -> int:
        """Queue ``frame`` on each of this process's sockets of ``user_id``; how many took it."""
        return sum(client.offer(frame) for client in list(self.local.get(user_id, ())))

    async def going_away(self) -> None:
        """Close every socket of this process with 1001 (the page reconnects, to another process or to this
        one restarted). On shutdown aiohttp waits up to its shutdown timeout for open handlers, and a
        socket's handler ends only when its socket closes."""
        clients = [client for clients in self.local.values() for client in clients]
        await asyncio.gather(*(c.close_with(CLOSE_GOING_AWAY, b"server shutting down") for c in clients),
                             return_exceptions=True)

    def sockets(self) -> int:
        return sum(len(c) for c in self.local.values())

    # lifecycle

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(f()) for f in (self._listen, self._dispatch, self._renew, self._consume)]

    async def stop(self) -> None:
        self._stop = True
        for clients in list(self.local.values()):
            for client in list(clients):
                client.drop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.pool.execute("DELETE FROM api_sockets WHERE process = $1", self.process)
        except Exception:  # noqa: BLE001 - they expire
            pass

    # PostgreSQL notifications

    def _on_notify(self, conn, pid, channel: str, payload: str) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if message.get("u") in self.local:
            self.events.put_nowait((channel, message))

    async def _listen(self) -> None:
        while not self._stop:
            conn = None
            try:
                conn = await asyncpg.connect(self.settings.database_url, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda c: lost.set())
                for channel in ("herald_inbox", "herald_unread", "herald_ws"):
                    await conn.add_listener(channel, self._on_notify)
                self.listening.set()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), 15)
                    except asyncio.TimeoutError:
                        await conn.fetchval("SELECT 1")  # a dead server shows here
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; counts are read again on each (re)connect
                log.warning("listen connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(1)

    async def _dispatch(self) -> None:
        """Act on the notifications in the order they came, reading a burst's new rows in one query."""
        while True:
            burst = [await self.events.get()]
            while not self.events.empty() and len(burst) < 500:
                burst.append(self.events.get_nowait())
            ids = [m["n"] for channel, m in burst if channel == "herald_inbox"]
            try:
                items = await store.items(self.pool, ids) if ids else {}
            except Exception:  # noqa: BLE001 - skip the items; the next unread frame still corrects the badge
                log.warning("could not read new notifications", exc_info=True)
                items = {}
            for channel, m in burst:
                if channel == "herald_unread":
                    self.broadcast(m["u"], unread_frame(m["r"], m["s"]))
                elif channel == "herald_inbox":
                    found = items.get(m["n"])
                    if found and found[0] == m["u"]:
                        self.broadcast(m["u"], notification_frame(found[1]))
                elif channel == "herald_ws" and m.get("p") != self.process:
                    self.broadcast(m["u"], m["f"])

    async def _renew(self) -> None:
        """Renew each socket's row and presence once per third of the TTL, a slice of them every second
        (a socket's slice is fixed by its id), so thousands of sockets cost an even trickle rather than a
        burst that holds up frames; expired rows (of processes killed outright) are swept once a round."""
        slices = max(1, int(self.settings.presence_ttl_s / 3))
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            due = [c for clients in list(self.local.values()) for c in clients
                   if int(c.connection_id[:8], 16) % slices == tick % slices]
            try:
                if due:
                    await self.pool.execute(
                        "UPDATE api_sockets SET expires_at = now() + make_interval(secs => $2) "
                        "WHERE connection_id = ANY($1::text[])",
                        [c.connection_id for c in due], float(self.settings.presence_ttl_s))
                for n, client in enumerate(due):
                    await self._presence(client, online=True)
                    if n % 200 == 199:
                        await asyncio.sleep(0)
                if tick % slices == 0:
                    await self.pool.execute("DELETE FROM api_sockets WHERE expires_at < now()")
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again next round
                log.warning("could not renew presence", exc_info=True)

    # herald.delivery.websocket

    async def _consume(self) -> None:
        from confluent_kafka import Consumer, KafkaError

        from herald.kafka import client_config

        loop = asyncio.get_running_loop()
        topic = self.settings.topic("delivery.websocket")
        self.consumer = consumer = Consumer({
            **client_config(self.settings),
            "group.id": f"{self.settings.topic_prefix}api-websocket",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 2000,
            "fetch.wait.max.ms": self.settings.fetch_max_wait_ms,  # a record arriving ends the wait at once
        })

        def fetch() -> list:
            # consume(n, t) waits for n records or t seconds; a frame must not wait for a batch to fill
            first = consumer.poll(0.2)
            return [] if first is None else [first, *consumer.consume(499, 0)]

        consumer.subscribe([topic], on_assign=lambda c, parts: loop.call_soon_threadsafe(self.consuming.set))
        try:
            while not self._stop:
                messages = await loop.run_in_executor(None, fetch)
                good = []
                for msg in messages:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.debug("consume error on %s: %s", topic, msg.error().name())
                        continue
                    good.append(msg)
                if not good:
                    continue
                try:
                    await self._deliver(good)
                    await loop.run_in_executor(None, self.outbox.producer.flush, 10)
                    await loop.run_in_executor(None, lambda: consumer.commit(asynchronous=False))
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - not committed: the batch is read again after a rebalance
                    log.exception("WebSocket deliveries failed; retrying from the last commit")
                    for tp in consumer.assignment():
                        committed = consumer.committed([tp], 10)[0]
                        consumer.seek(tp.__class__(tp.topic, tp.partition, max(committed.offset, 0)))
                    await asyncio.sleep(1)
        finally:
            await loop.run_in_executor(None, consumer.close)

    async def _deliver(self, messages: list) -> None:
        from herald import dlq
        from schemas.codec import DecodeError

        now = int(time.time() * 1000)
        requests = []
        for msg in messages:
            try:
                requests.append(self.codec.decode(msg.value(), "DeliveryRequest"))
            except DecodeError as exc:
                self.outbox.producer.produce(self.settings.topic("dlq"), key=msg.key(), value=msg.value(),
                                             headers=dlq.headers(exc.reason, exc.message, "api-websocket", msg.topic(),
                                                                 msg.partition(), msg.offset(), msg.headers()))
        outcomes: dict[str, tuple[str, str | None]] = {}
        remote_users, remote_payloads, remote_ids = [], [], []
        for r in requests:
            created = r["created_at"]
            created_ms = int(created.timestamp() * 1000) if isinstance(created, datetime) else int(created)
            if now - created_ms > STALE_S * 1000:
                outcomes[r["delivery_id"]] = ("SUPPRESSED", f"older than {STALE_S} s when read: not live any more")
                continue
            frame = notification_frame(delivery_item(r))
            here = self.broadcast(r["user_id"], frame)
            outcomes[r["delivery_id"]] = ("SENT", None) if here else ("SUPPRESSED", "no open WebSocket")
            if len(frame) > NOTIFY_MAX - 200:
                item = delivery_item(r)
                item["data"], item["truncated"] = {}, True
                item["body"] = item["body"][:2000]
                item["title"] = item["title"][:500]
                frame = notification_frame(item)
            remote_users.append(r["user_id"])
            remote_payloads.append(orjson.dumps({"u": r["user_id"], "p": self.process, "f": frame}).decode())
            remote_ids.append(r["delivery_id"])
        if remote_users:
            rows = await self.pool.fetch(
                # the select list runs only for rows the WHERE kept: no NOTIFY for users without a socket
                "SELECT d.id, pg_notify('herald_ws', d.payload)::text "
                "FROM unnest($1::text[], $2::text[], $3::text[]) AS d(user_id, payload, id) "
                "WHERE EXISTS (SELECT 1 FROM api_sockets s WHERE s.user_id = d.user_id AND s.process <> $4 "
                "AND s.expires_at > now())",
                remote_users, remote_payloads, remote_ids, self.process)
            for row in rows:
                outcomes[row["id"]] = ("SENT", None)
        for delivery_id, (status, why) in outcomes.items():
            await self.outbox.publish("delivery.status", "DeliveryStatus", delivery_id, {
                "delivery_id": delivery_id, "channel": "WEBSOCKET", "status": status, "attempt": 1,
                "provider": "websocket", "error": why, "at": now})
