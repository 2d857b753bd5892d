"""The query API's routes. Errors are ``{"error": {"code", "message"}}`` with a 4xx for the caller's mistakes."""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time

import asyncpg
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from api import auth, contacts, inbox, openapi, preferences, status, store, stream
from api.http import CODEC, HUB, OUTBOX, POOL, SECRET, SETTINGS, VERIFIER, ApiError, error, identifier, json_response
from api.http import user as _user
from api.outbox import Outbox
from herald import logs
from herald.settings import Settings
from schemas.codec import Codec
from schemas.registry import Registry

log = logging.getLogger("herald.api")

REQUESTS = Counter("herald_api_requests_total", "API requests by route and status", ["route", "status"])
LATENCY = Histogram("herald_api_request_seconds", "API request latency by route", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

START_GRACE_S = 10.0

COUNTS = web.AppKey("counts", store.UnreadCounts)


class _Metrics:
    """The metrics' labelled children, looked up once per route and status rather than on every request."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], object] = {}
        self.latency: dict[str, object] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        counter = self.requests.get((route, status))
        if counter is None:
            counter = self.requests[(route, status)] = REQUESTS.labels(route, str(status))
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = LATENCY.labels(route)
        counter.inc()
        histogram.observe(seconds)


METRICS = web.AppKey("metrics", _Metrics)


@web.middleware
async def errors_and_metrics(request: web.Request, handler):
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except auth.AuthError as exc:
        response = error(exc.status, exc.code, exc.message)
    except ApiError as exc:
        response = error(exc.status, exc.code, exc.message, **exc.extra)
    except store.BadCursor as exc:
        response = error(400, "BAD_CURSOR", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, exc.reason.upper().replace(" ", "_"), exc.text or exc.reason)
    except Exception:  # noqa: BLE001 - a 5xx is a bug; log it, answer in the contract's shape
        log.exception("unhandled error on %s", route)
        response = error(500, "INTERNAL", "internal error; see the API log")
    request.app[METRICS].observe(route, response.status, time.perf_counter() - started)
    return response


async def unread_count(request: web.Request) -> web.Response:
    return json_response(await request.app[COUNTS].get(_user(request)))


async def notifications(request: web.Request) -> web.Response:
    user_id = _user(request)
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return error(400, "BAD_LIMIT", "limit must be a whole number from 1 to 100")
    if not 1 <= limit <= 100:
        return error(400, "BAD_LIMIT", "limit must be a whole number from 1 to 100")
    status = request.query.get("status")
    if status not in (None, "unread", "all"):
        return error(400, "BAD_STATUS", "status is 'unread' or 'all'")
    return json_response(await store.page(request.app[POOL], user_id, limit, request.query.get("cursor"),
                                          status == "unread"))


async def _publish_read(request: web.Request, user_id: str, action: str, notification_id: str | None) -> None:
    """One ``herald.ReadEvent`` per action, queued (not awaited): the database already holds the change."""
    await request.app[OUTBOX].publish("reads", "ReadEvent", user_id, {
        "user_id": user_id, "action": action, "notification_id": notification_id, "at": int(time.time() * 1000)})


def _action(name: str, change, action: str):
    """A route that applies ``change`` to one notification, records ``action`` and answers the counts."""

    async def handler(request: web.Request) -> web.Response:
        user_id = _user(request)
        notification_id = identifier(request.match_info["notification_id"], "notification_id")
        if not await change(request.app[POOL], user_id, notification_id):
            return error(404, "NOT_FOUND", "no such notification for this user")
        await _publish_read(request, user_id, action, notification_id)
        return json_response(await store.unread_count(request.app[POOL], user_id))

    handler.__name__ = name
    return handler


read_one = _action("read_one", store.mark_read, "READ")
seen_one = _action("seen_one", store.mark_seen, "SEEN")
archive_one = _action("archive_one", store.archive, "ARCHIVED")


async def read_all(request: web.Request) -> web.Response:
    user_id = _user(request)
    await store.mark_all_read(request.app[POOL], user_id)
    await _publish_read(request, user_id, "READ_ALL", None)
    return json_response(await store.unread_count(request.app[POOL], user_id))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[POOL].fetchval("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        return error(503, "NOT_READY", f"database not reachable: {type(exc).__name__}")
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # several workers: the sum of all of them
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _init_conn(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (RESET ALL, UNLISTEN *, ...): one more round trip per
    request, for session state this API never sets. An open transaction is still rolled back by the pool."""


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[errors_and_metrics])
    app[SETTINGS] = settings
    app[SECRET] = auth.signing_secret(settings)
    app[VERIFIER] = auth.Verifier(app[SECRET])
    app[METRICS] = _Metrics()

    async def lifecycle(app: web.Application):
        app[POOL] = pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10, init=_init_conn,
                                            reset=_no_reset)
        app[COUNTS] = store.UnreadCounts(pool)
        app[CODEC] = codec = Codec(Registry(settings.schema_registry_url))
        app[OUTBOX] = outbox = Outbox(settings, codec)
        app[HUB] = hub = stream.Hub(settings, pool, outbox, codec)
        hub.start()
        yield
        await hub.stop()
        outbox.close(5)
        await app[POOL].close()

    app.cleanup_ctx.append(lifecycle)

    async def close_sockets(app: web.Application) -> None:
        await app[HUB].going_away()

    app.on_shutdown.append(close_sockets)
    base = "/v1/users/{user_id}"
    app.router.add_get(f"{base}/unread-count", unread_count)
    app.router.add_get(f"{base}/notifications", notifications)
    app.router.add_post(f"{base}/notifications/read-all", read_all)
    app.router.add_post(f"{base}/notifications/{{notification_id}}/read", read_one)
    app.router.add_post(f"{base}/notifications/{{notification_id}}/seen", seen_one)
    app.router.add_post(f"{base}/notifications/{{notification_id}}/archive", archive_one)
    app.router.add_get(f"{base}/preferences", preferences.get_preferences)
    app.router.add_put(f"{base}/preferences", preferences.put_preferences)
    app.router.add_get(f"{base}/contacts", contacts.get_contacts)
    app.router.add_put(f"{base}/contacts", contacts.put_contacts)
    app.router.add_get(f"{base}/stream", stream.stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi.serve)
    app.router.add_get("/inbox", inbox.page)
    app.router.add_get("/inbox.js", inbox.script)
    status.setup(app)
    return app


def serve(settings: Settings, reuse_port: bool = False) -> None:
    """One API process on uvloop until SIGINT or SIGTERM (no access log: a line per request costs more than
    an unread count)."""
    web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port, print=None, access_log=None,
                reuse_port=reuse_port or None, loop=uvloop.new_event_loop())


def _worker(settings: Settings) -> None:
    # a spawned process starts with no logging set up: HERALD_LOG_FORMAT again, the pid in each text line
    logs.configure(settings.log_format, logging.INFO, text="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    serve(settings, reuse_port=True)


def workers_wanted(settings: Settings | None = None) -> int:
    """``HERALD_API_WORKERS``, else one process per core, at most 4: one Python process serves from one core."""
    wanted = (settings or Settings.from_env()).api_workers
    return max(1, wanted) if wanted > 0 else max(1, min(4, os.cpu_count() or 1))


def run(settings: Settings | None = None, workers: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM: in this process when ``workers`` is 1, else in that many processes.

    The workers each listen on the port with SO_REUSEPORT, and the kernel spreads connections among
    them. Their metrics are summed through prometheus_client's multiprocess mode in a folder made for
    this run. A worker that dies after start-up is replaced; one that dies within START_GRACE_S of its
    start (the port taken, the database unreachable) stops them all, and the command exits with its code."""
    settings = settings or Settings.from_env()
    workers = workers or workers_wanted(settings)
    if workers == 1:
        serve(settings)
        return
    with socket.socket() as probe:  # a port another server listens on, with SO_REUSEPORT or not, fails here
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.api_host, settings.api_port))
        except OSError as exc:
            raise SystemExit(f"api: cannot listen on {settings.api_host}:{settings.api_port}: {exc.strerror}; "
                             f"stop what holds it or choose another HERALD_API_PORT") from None
    metrics_dir = tempfile.mkdtemp(prefix="herald-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers start afresh and inherit it
    ctx = multiprocessing.get_context("spawn")
    stopping: list[int] = []

    def start() -> tuple:
        proc = ctx.Process(target=_worker, args=(settings,), name="herald-api-worker")
        proc.start()
        return proc, time.monotonic()

    def stop(signum, frame) -> None:
        stopping.append(signum)
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()

    procs = [start() for _ in range(workers)]
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        log.info("API on %s:%d in %d worker processes", settings.api_host, settings.api_port, workers)
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p, _ in procs])
            for i, (proc, started) in enumerate(procs):
                if proc.exitcode is None or stopping:
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid)
                if time.monotonic() - started < START_GRACE_S:
                    log.error("API worker %d exited with %s during start-up; stopping", proc.pid, proc.exitcode)
                    code = proc.exitcode or 1
                    stop(None, None)
                    break
                log.warning("API worker %d exited with %s; starting another", proc.pid, proc.exitcode)
                procs[i] = start()
    finally:
        for proc, _ in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if code:
        raise SystemExit(code)
