"""The API's live side under load, against a real `herald api` and the local broker and database.

    python -m bench.ws --connections 20000 --rate 1000 --duration 20

prints, for one run:
- sockets: how many WebSockets opened (one user each), how long that took, and the API processes' open
  files and resident memory per connection (their growth over the idle baseline);
- fan-out: records written to herald.delivery.websocket at ``--rate`` per second, each for one connected
  user; latency from the produce call to the frame read by the client (p50, p99, max), and frames missing;
- (the sockets stay open, idle, through the phases below)
- preferences: PUT then GET of the same user (a new connection each, so any API process may answer);
  p50/p99 of the PUT, of the GET and of the pair, and how many GETs did not return the PUT's document;
- inbox list: GET /notifications?limit=20 at ``--list-rate`` per second, latency measured from each
  request's scheduled time (so a stall counts for every request it delays), p50/p99.

No figure is asserted: it prints what it measured. The clients are a minimal WebSocket reader on asyncio
(a few KB a connection) in ``--client-procs`` processes, so the API, not the client, is what is measured.
Everything it writes (topics with a fresh prefix, users ``wsb<hex>-*``) is removed at the end unless
``--keep``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import secrets
import struct
import time
import uuid
from pathlib import Path

from bench.api_latency import _pct, start_api, stop_api

SECRET_BYTES = 48


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Reader(asyncio.Protocol):
    """A WebSocket client that reads text frames and records when marked ones arrive."""

    def __init__(self, on_frame) -> None:
        self.on_frame = on_frame
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4:]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                return
            self.upgraded.set_result(True)
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, offset = struct.unpack(">H", self.buffer[2:4])[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, offset = struct.unpack(">Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < offset + length:
                return
            payload = bytes(self.buffer[offset:offset + length])
            del self.buffer[:offset + length]
            if opcode == 0x1:
                self.on_frame(payload)
            elif opcode == 0x9:  # ping: answer with a masked pong
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed"))


async def _open(port: int, user: str, token: str, on_frame) -> Reader:
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(lambda: Reader(on_frame), "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    reader.transport.write((f"GET /v1/users/{user}/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                            f"Authorization: Bearer {token}\r\n\r\n").encode())
    await asyncio.wait_for(reader.upgraded, 60)
    return reader


def _client(port: int, users: list[str], tokens: list[str], opened, go, results, done) -> None:
    """One client process: open a socket per user, report, then collect marked frames' latencies."""
    _raise_nofile()
    latencies: list[float] = []
    seen: set[str] = set()

    def on_frame(payload: bytes) -> None:
        if b'"bench_t"' not in payload:
            return
        now = time.time()
        frame = json.loads(payload)
        data = frame["notification"]["data"]
        if frame["notification"]["notification_id"] not in seen:
            seen.add(frame["notification"]["notification_id"])
            latencies.append((now - float(data["bench_t"])) * 1000)

    async def main() -> None:
        readers = []
        failed = 0
        gate = asyncio.Semaphore(200)

        async def one(user: str, token: str) -> None:
            nonlocal failed
            async with gate:
                try:
                    readers.append(await _open(port, user, token, on_frame))
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    failed += 1

        await asyncio.gather(*(one(u, t) for u, t in zip(users, tokens)))
        opened.put((len(readers), failed))
        while not go.is_set():
            await asyncio.sleep(0.1)
        while go.is_set():
            await asyncio.sleep(0.1)
        results.put((latencies, len(seen)))
        while not done.is_set():  # stay open (idle) while the other phases run
            await asyncio.sleep(0.2)
        for r in readers:
            r.transport.close()

    asyncio.run(main())


def _rss_and_fds(pids: list[int]) -> tuple[int, int]:
    rss = fds = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return rss, fds


def _workers(pid: int) -> list[int]:
    """The API's worker processes (not multiprocessing's resource tracker), or the process itself."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        children = []
    workers = [c for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    return workers or [pid]


def _fanout(settings, users: list[str], rate: float, duration: float) -> tuple[int, float]:
    from herald.kafka import make_producer
    from schemas.codec import Codec
    from schemas.registry import Registry

    codec = Codec(Registry(settings.schema_registry_url))
    producer = make_producer(settings, linger_ms=1)
    topic = settings.topic("delivery.websocket")
    subject = f"{topic}-value"
    total = int(rate * duration)
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        user = users[i % len(users)]
        record = {"delivery_id": f"wsb-{uuid.uuid4().hex}", "user_id": user, "channel": "WEBSOCKET", "kind": "SINGLE",
                  "event_ids": [], "type": "BENCH", "priority": "NORMAL", "title": "bench", "body": "b",
                  "data": {"bench_t": repr(time.time())}, "created_at": int(time.time() * 1000)}
        producer.produce(topic, codec.encode(subject, "DeliveryRequest", record), user.encode())
        producer.poll(0)
    producer.flush(30)
    return total, time.monotonic() - start


async def _preferences(port: int, users: list[str], tokens: list[str], pairs: int) -> dict:
    import aiohttp

    put_ms, get_ms, pair_ms, stale = [], [], [], 0
    zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(pairs):
            user, token = users[i % len(users)], tokens[i % len(tokens)]
            url = f"http://127.0.0.1:{port}/v1/users/{user}/preferences"
            h = {"Authorization": f"Bearer {token}"}
            body = {"timezone": zones[i % 4], "quiet_hours": {"start": f"{i % 24:02d}:00", "end": "07:00"}}
            t0 = time.perf_counter()
            async with session.put(url, json=body, headers=h) as r:
                written = await r.json()
            t1 = time.perf_counter()
            async with session.get(url, headers=h) as r:
                read = await r.json()
            t2 = time.perf_counter()
            put_ms.append((t1 - t0) * 1000)
            get_ms.append((t2 - t1) * 1000)
            pair_ms.append((t2 - t0) * 1000)
            stale += read != written
    return {"pairs": pairs, "put": put_ms, "get": get_ms, "pair": pair_ms, "stale": stale}


async def _inbox_list(port: int, users: list[str], tokens: list[str], rate: float, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    total = int(rate * duration)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal errors
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            user, token = users[i % len(users)], tokens[i % len(tokens)]
            try:
                async with session.get(f"http://127.0.0.1:{port}/v1/users/{user}/notifications?limit=20",
                                       headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - due) * 1000)

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    return {"requests": total, "errors": errors, "latencies": latencies, "achieved": total / elapsed}


def _inbox_list_process(port: int, users: list[str], tokens: list[str], rate: float, duration: float) -> dict:
    return asyncio.run(_inbox_list(port, users, tokens, rate, duration))


def _summary(values: list[float]) -> str:
    s = sorted(values)
    if not s:
        return "no samples"
    return f"p50 {_pct(s, 50):.1f} ms, p99 {_pct(s, 99):.1f} ms, max {s[-1]:.1f} ms"


def run(connections: int = 2000, rate: float = 1000, duration: float = 10, list_rate: float = 2000,
        list_duration: float = 5, pref_pairs: int = 300, client_procs: int = 2, api_workers: int = 2,
        keep: bool = False, progress=print) -> dict:
    import asyncpg

    from api import auth
    from herald.settings import Settings
    from herald.topics import ensure_topics, register_schemas
    from infra import postgres
    from tests.conftest import free_port

    limit = _raise_nofile()
    prefix = f"wsb{secrets.token_hex(3)}"
    settings = Settings.from_env(topic_prefix=f"{prefix}.", partitions=4)
    postgres.migrate()
    ensure_topics(settings)
    register_schemas(settings)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    port = free_port()
    users = [f"{prefix}-u{i}" for i in range(connections)]
    tokens = [auth.mint(secret, u, ttl_s=3600) for u in users]
    figures: dict = {"connections_wanted": connections, "nofile_limit": limit}
    proc = start_api(port, secret, env={"HERALD_TOPIC_PREFIX": settings.topic_prefix,
                                        "HERALD_API_WORKERS": str(api_workers)})
    ctx = multiprocessing.get_context("spawn")
    clients = []
    try:
        async def seed() -> None:
            conn = await asyncpg.connect(settings.database_url)
            try:
                await conn.execute(
                    "INSERT INTO notifications (notification_id, user_id, type, priority, kind, title, body, event_ids,"
                    " created_at) SELECT $1 || '-n' || i, $1 || '-u' || (i % 200), 'BENCH', 'NORMAL', 'SINGLE', 't', 'b',"
                    " '{}', now() - make_interval(secs => i) FROM generate_series(1, 10000) i", prefix)
            finally:
                await conn.close()

        asyncio.run(seed())  # before any socket opens: no live frames for it
        time.sleep(2)  # every worker up
        pids = _workers(proc.pid)
        rss0, fds0 = _rss_and_fds(pids)
        opened_q, results_q, go, done = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
        share = (connections + client_procs - 1) // client_procs
        started = time.monotonic()
        for c in range(client_procs):
            part = slice(c * share, (c + 1) * share)
            p = ctx.Process(target=_client, args=(port, users[part], tokens[part], opened_q, go, results_q, done))
            p.start()
            clients.append(p)
        opened = failed = 0
        for _ in clients:
            ok, bad = opened_q.get(timeout=900)
            opened += ok
            failed += bad
        figures["connect_s"] = round(time.monotonic() - started, 1)
        time.sleep(2)
        rss1, fds1 = _rss_and_fds(pids)
        figures.update(opened=opened, failed=failed, api_processes=len(pids),
                       rss_per_connection_kb=round((rss1 - rss0) / max(1, opened) / 1024, 1),
                       fds_per_connection=round((fds1 - fds0) / max(1, opened), 2),
                       api_rss_mb=round(rss1 / 2 ** 20))
        progress(f"sockets: {opened} open ({failed} failed) in {figures['connect_s']} s over {len(pids)} API processes; "
                 f"per connection {figures['fds_per_connection']} fds, {figures['rss_per_connection_kb']} KB RSS "
                 f"(API total {figures['api_rss_mb']} MB)")

        go.set()
        time.sleep(3)  # the shared consumer group settles
        sent, took = _fanout(settings, users[:opened] or users, rate, duration)
        time.sleep(5)
        go.clear()
        latencies, received = [], 0
        for _ in clients:
            lat, n = results_q.get(timeout=120)
            latencies += lat
            received += n
        figures.update(fanout_sent=sent, fanout_rate=round(sent / took), fanout_received=received,
                       fanout_missing=sent - received, fanout_p50_ms=round(_pct(sorted(latencies), 50), 1),
                       fanout_p99_ms=round(_pct(sorted(latencies), 99), 1))
        progress(f"fan-out: {sent} deliveries at {figures['fanout_rate']}/s, {received} frames, "
                 f"{sent - received} missing; produce -> frame {_summary(latencies)}")
        prefs = asyncio.run(_preferences(port, users, tokens, pref_pairs))
        figures.update(prefs_stale=prefs["stale"], prefs_put_p99_ms=round(_pct(sorted(prefs["put"]), 99), 1),
                       prefs_get_p99_ms=round(_pct(sorted(prefs["get"]), 99), 1),
                       prefs_pair_p99_ms=round(_pct(sorted(prefs["pair"]), 99), 1))
        progress(f"preferences: {pref_pairs} PUT->GET pairs, {prefs['stale']} GETs not returning the PUT; "
                 f"PUT {_summary(prefs['put'])}; GET {_summary(prefs['get'])}; pair {_summary(prefs['pair'])}")

        with ctx.Pool(client_procs) as list_pool:  # one client process tops out near the rate asked of it
            parts = list_pool.starmap(_inbox_list_process, [(port, users[:200], tokens[:200], list_rate / client_procs,
                                                             list_duration) for _ in range(client_procs)])
        listing = {"requests": sum(p["requests"] for p in parts), "errors": sum(p["errors"] for p in parts),
                   "latencies": [v for p in parts for v in p["latencies"]], "achieved": sum(p["achieved"] for p in parts)}
        figures.update(list_requests=listing["requests"], list_errors=listing["errors"],
                       list_rate=round(listing["achieved"]), list_p50_ms=round(_pct(sorted(listing["latencies"]), 50), 1),
                       list_p99_ms=round(_pct(sorted(listing["latencies"]), 99), 1))
        progress(f"inbox list: {listing['requests']} requests at {figures['list_rate']}/s ({listing['errors']} errors); "
                 f"{_summary(listing['latencies'])}")
        done.set()
        for p in clients:
            p.join(60)
    finally:
        for p in clients:
            if p.is_alive():
                p.kill()
        stop_api(proc)
        if not keep:
            _cleanup(settings, prefix)
    return figures


def _cleanup(settings, prefix: str) -> None:
    import asyncpg
    from confluent_kafka.admin import AdminClient

    from herald.kafka import client_config
    from herald.topics import SPECS

    async def rows() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            for table in ("notifications", "unread_counts", "user_preferences", "api_sockets"):
                await conn.execute(f"DELETE FROM {table} WHERE user_id LIKE $1", f"{prefix}-%")
        finally:
            await conn.close()

    asyncio.run(rows())
    admin = AdminClient(client_config(settings))
    for future in admin.delete_topics([settings.topic(s.name) for s in SPECS]).values():
        try:
            future.result(30)
        except Exception:  # noqa: BLE001 - a topic never created is fine
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herald bench ws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000, help="WebSockets to open, one user each")
    parser.add_argument("--rate", type=float, default=1000, help="WebSocket deliveries per second")
    parser.add_argument("--duration", type=float, default=10, help="seconds of deliveries")
    parser.add_argument("--list-rate", type=float, default=2000, help="inbox list requests per second")
    parser.add_argument("--list-duration", type=float, default=5, help="seconds of inbox list requests")
    parser.add_argument("--pref-pairs", type=int, default=300, help="preferences PUT->GET pairs")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes holding the sockets")
    parser.add_argument("--api-workers", type=int, default=2, help="`herald api` processes")
    parser.add_argument("--keep", action="store_true", help="leave the topics and rows it wrote")
    args = parser.parse_args(argv)
    figures = run(args.connections, args.rate, args.duration, args.list_rate, args.list_duration, args.pref_pairs,
                  args.client_procs, args.api_workers, args.keep)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
