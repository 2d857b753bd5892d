"""GET /status, /status.js and /status/queries: Herald's own status page, drawn from Prometheus.

The page (plain HTML and one small script, like the inbox page) shows events per second, decisions by
outcome, deliveries by channel and status, consumer lag, the circuit breakers, dead letters, retries
waiting, API latency and which processes answer, refreshed every few seconds.

Rules:

- ``/status/queries`` asks Prometheus's HTTP API (``HERALD_PROMETHEUS_URL``, else the local one on
  ``HERALD_PROMETHEUS_PORT`` that ``herald up --monitoring`` starts) for a fixed set of named queries
  (``QUERIES``) and one history (``HISTORY``, the last 15 minutes of events per second). The browser
  never sends PromQL: it names nothing, so the route cannot be used to run arbitrary queries.
- Prometheus away or slow (3 s) is an answer too: ``available`` false and the reason in ``error``, with a
  200, so the page says "Prometheus not reachable" instead of failing.
- What it shows are aggregates with bounded labels (outcomes, channels, statuses, reasons, processes):
  no user id or address reaches the page, which is why it needs no token, like ``/metrics``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from api import openapi
from api.http import SETTINGS

STATIC = Path(__file__).resolve().parent / "static"
TIMEOUT_S = 3.0
HISTORY_S = 15 * 60
HISTORY_STEP_S = 15


@dataclass(frozen=True)
class Query:
    name: str
    title: str
    unit: str  # "/s", "s", "" (a count), "state"
    expr: str


QUERIES: tuple[Query, ...] = (
    Query("events", "Events in", "/s", "sum(rate(herald_worker_events_total[1m]))"),
    Query("decisions", "Decisions by outcome", "/s", "sum by (outcome) (rate(herald_worker_decisions_total[1m]))"),
    Query("deliveries", "Deliveries by channel and status", "/s",
          "sum by (channel, status) (rate(herald_sink_outcomes_total[1m]))"),
    Query("lag", "Consumer lag (events not read yet)", "", "sum(herald_worker_unread_events)"),
    Query("breakers", "Circuit breakers", "state", "max by (channel, state) (herald_sink_breaker_state) == 1"),
    Query("dead_letters", "Dead letters, last 15 minutes", "",
          "sum by (reason) (increase(herald_worker_dead_letters_total[15m]))"
          " or sum by (channel) (increase(herald_sink_outcomes_total{status=\"DLQ\"}[15m]))"),
    Query("retries_waiting", "Retries waiting", "", "sum by (channel) (herald_sink_retries_waiting)"),
    Query("api_p95", "API latency, 95th percentile", "s",
          "histogram_quantile(0.95, sum by (le) (rate(herald_api_request_seconds_bucket[1m])))"),
    Query("processes", "Processes answering", "state", "max by (process) (up{job=~\"herald.*\"})"),
)
HISTORY = Query("events_history", "Events in, last 15 minutes", "/s", "sum(rate(herald_worker_events_total[1m]))")

SESSION = web.AppKey("status_session", aiohttp.ClientSession)


def prometheus_url(settings) -> str:  # noqa: ANN001 - Settings
    return (settings.prometheus_url or f"http://127.0.0.1:{settings.prometheus_port}").rstrip("/")


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                    "frame-ancestors 'none'"),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


async def page(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "status.html").read_bytes(), content_type="text/html", charset="utf-8",
                        headers=_headers())


async def script(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "status.js").read_bytes(), content_type="text/javascript", charset="utf-8",
                        headers=_headers())


async def _ask(session: aiohttp.ClientSession, base: str, path: str, params: dict) -> list:
    async with session.get(f"{base}{path}", params=params) as r:
        body = await r.json(content_type=None)
    if body.get("status") != "success":
        raise ValueError(body.get("error") or f"HTTP {r.status}")
    return body["data"]["result"]


def _number(text: str) -> float | None:
    value = float(text)
    return None if value != value or value in (float("inf"), float("-inf")) else round(value, 6)


async def queries(request: web.Request) -> web.Response:
    """The named queries' current values and the events history, as JSON (see the module docstring)."""
    base = prometheus_url(request.app[SETTINGS])
    session = request.app[SESSION]
    now = time.time()
    out: dict = {"prometheus": base, "available": True, "error": None, "at": now, "panels": [],
                 "history": {"name": HISTORY.name, "title": HISTORY.title, "unit": HISTORY.unit, "points": []}}
    try:
        answers = await asyncio.wait_for(asyncio.gather(
            *(_ask(session, base, "/api/v1/query", {"query": q.expr, "time": f"{now:.3f}"}) for q in QUERIES),
            _ask(session, base, "/api/v1/query_range", {"query": HISTORY.expr, "start": f"{now - HISTORY_S:.3f}",
                                                        "end": f"{now:.3f}", "step": str(HISTORY_STEP_S)})),
            TIMEOUT_S)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as exc:
        out.update(available=False, error=f"Prometheus at {base} not reachable ({type(exc).__name__})")
        out["panels"] = [{"name": q.name, "title": q.title, "unit": q.unit, "series": []} for q in QUERIES]
        return web.json_response(out)
    for q, result in zip(QUERIES, answers[:-1]):
        series = [{"labels": {k: v for k, v in r["metric"].items() if k != "__name__"},
                   "value": _number(r["value"][1])} for r in result]
        out["panels"].append({"name": q.name, "title": q.title, "unit": q.unit,
                              "series": sorted(series, key=lambda s: sorted(s["labels"].items()))})
    history = answers[-1]
    if history:
        out["history"]["points"] = [[float(t), _number(v)] for t, v in history[0]["values"]]
    return web.json_response(out)


def setup(app: web.Application) -> None:
    """Add the status page's routes to ``app``, with an HTTP client for Prometheus opened and closed with it."""
    async def session(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/status", page)
    app.router.add_get("/status.js", script)
    app.router.add_get("/status/queries", queries)


_SERIES = {"type": "object", "required": ["labels", "value"], "additionalProperties": False,
           "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}},
                          "value": {"type": ["number", "null"]}}}
STATUS_SCHEMA = {
    "type": "object", "required": ["prometheus", "available", "error", "at", "panels", "history"],
    "properties": {
        "prometheus": {"type": "string"}, "available": {"type": "boolean"}, "error": {"type": ["string", "null"]},
        "at": {"type": "number"},
        "panels": {"type": "array", "items": {
            "type": "object", "required": ["name", "title", "unit", "series"],
            "properties": {"name": {"type": "string"}, "title": {"type": "string"}, "unit": {"type": "string"},
                           "series": {"type": "array", "items": _SERIES}}}},
        "history": {"type": "object", "required": ["name", "title", "unit", "points"],
                    "properties": {"name": {"type": "string"}, "title": {"type": "string"}, "unit": {"type": "string"},
                                   "points": {"type": "array", "items": {"type": "array", "items": {"type": ["number", "null"]}}}}},
    }}
PATHS = {
    "/status": {"get": {"operationId": "statusPage", "summary": "Herald's status page (rates and lag from Prometheus)",
                        "security": [],
                        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    "/status.js": {"get": {"operationId": "statusScript", "summary": "The status page's script", "security": [],
                           "responses": {"200": {"description": "JavaScript",
                                                 "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
    "/status/queries": {"get": {
        "operationId": "statusQueries", "security": [],
        "summary": "The status page's fixed, named Prometheus queries and their current values",
        "responses": {"200": {"description": "the values; available=false when Prometheus does not answer",
                              "content": {"application/json": {"schema": STATUS_SCHEMA}}}}}},
}
openapi.DOCUMENT["paths"].update(PATHS)  # described beside the routes, like the others in api/openapi.py
