"""A local stand-in for FCM and Twilio: answers as they do, records every message, fails when told to.

Never part of a production path: ``herald up`` starts it on :8090 so the push and SMS sinks have somewhere
to send, and tests start it on a free port. Run ``python -m infra.sandbox [--port 8090] [--record FILE]``;
it prints ``sandbox listening on http://HOST:PORT`` when ready.

- ``POST /v1/projects/{project}/messages:send`` (FCM HTTP v1): 200 ``{"name": ...}``. A token starting with
  ``unregistered`` gets 404 with errorCode ``UNREGISTERED``; one starting with ``invalid`` gets 400
  ``INVALID_ARGUMENT``.
- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (Twilio, form-encoded To, From, Body): 201 ``{"sid": ...}``.
  ``To`` of ``+15005550001`` (Twilio's magic invalid number) gets 400 code 21211.
- ``GET /_sandbox/messages[?kind=push|sms]``: what was accepted, as JSON; ``DELETE`` forgets it.
- ``POST /_sandbox/faults`` with JSON (or ``HERALD_SANDBOX_FAULTS`` at start) sets how it misbehaves:
  ``fail_rate`` (share of requests answered ``status``, default 503, with ``retry_after`` seconds when set),
  ``hang_rate`` and ``hang_s`` (share held that long, then answered 503, not accepted), ``garbage_rate`` (200
  with a body that is not the provider's; accepted), ``budget`` (how many faults before it behaves again;
  null: no end). ``GET`` returns the current faults; ``POST {}`` clears them.
A message refused by a fault is not recorded; one answered with garbage is (the provider got it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import deque
from pathlib import Path

from aiohttp import web

DEFAULT_FAULTS = {"fail_rate": 0.0, "status": 503, "retry_after": None, "hang_rate": 0.0, "hang_s": 30.0,
                  "garbage_rate": 0.0, "budget": None}


class Sandbox:
    def __init__(self, record: Path | None = None, faults: dict | None = None, keep: int = 200_000) -> None:
        self.messages: deque[dict] = deque(maxlen=keep)
        self.faults = {**DEFAULT_FAULTS, **(faults or {})}
        self.record = open(record, "a", buffering=1) if record else None
        self.counter = 0
        self.rng = random.Random()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/projects/{project}/messages:send", self.fcm)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio)
        app.router.add_get("/_sandbox/messages", self.list_messages)
        app.router.add_delete("/_sandbox/messages", self.clear)
        app.router.add_get("/_sandbox/faults", self.get_faults)
        app.router.add_post("/_sandbox/faults", self.set_faults)
        return app

    async def _fault(self) -> web.Response | str | None:
        """A fault response to give instead of an answer, "garbage" to answer garbage, or None."""
        f = self.faults
        if f["budget"] is not None and f["budget"] <= 0:
            return None
        roll = self.rng.random()
        hit = None
        if roll < f["hang_rate"]:
            if f["budget"] is not None:  # counted before the wait, so requests arriving meanwhile see it
                f["budget"] -= 1
            await asyncio.sleep(float(f["hang_s"]))
            return web.json_response({"error": {"code": 503, "status": "UNAVAILABLE"}}, status=503)
        elif roll < f["hang_rate"] + f["fail_rate"]:
            headers = {"Retry-After": str(f["retry_after"])} if f["retry_after"] is not None else {}
            hit = web.json_response({"error": {"code": f["status"], "status": "UNAVAILABLE", "message": "sandbox fault"}},
                                    status=int(f["status"]), headers=headers)
        elif roll < f["hang_rate"] + f["fail_rate"] + f["garbage_rate"]:
            hit = "garbage"
        if hit is not None and f["budget"] is not None:
            f["budget"] -= 1
        return hit

    def _keep(self, message: dict) -> None:
        self.counter += 1
        message["n"] = self.counter
        message["at"] = time.time()
        self.messages.append(message)
        if self.record:
            self.record.write(json.dumps(message) + "\n")

    async def fcm(self, request: web.Request) -> web.Response:
        fault = await self._fault()
        if isinstance(fault, web.Response):
            return fault
        try:
            body = await request.json()
            message = body["message"]
            token = message["token"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, status=400)
        if token.startswith("unregistered"):
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}},
                status=404)
        if token.startswith("invalid"):
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}},
                status=400)
        notification = message.get("notification") or {}
        self._keep({"kind": "push", "project": request.match_info["project"], "token": token,
                    "title": notification.get("title"), "body": notification.get("body"),
                    "data": message.get("data") or {}, "auth": request.headers.get("Authorization", ""),
                    "garbage": fault == "garbage"})
        if fault == "garbage":
            return web.Response(text="<html>gateway says hi</html>", content_type="text/html")
        return web.json_response({"name": f"projects/{request.match_info['project']}/messages/{self.counter}"})

    async def twilio(self, request: web.Request) -> web.Response:
        fault = await self._fault()
        if isinstance(fault, web.Response):
            return fault
        form = await request.post()
        to, body = form.get("To"), form.get("Body")
        if not to or not form.get("From") or body is None:
            return web.json_response({"code": 21604, "message": "To, From and Body are required", "status": 400},
                                     status=400)
        if to == "+15005550001":
            return web.json_response({"code": 21211, "message": "The 'To' number is not a valid phone number.",
                                      "status": 400}, status=400)
        self._keep({"kind": "sms", "account": request.match_info["sid"], "to": to, "from": form.get("From"),
                    "body": body, "status_callback": form.get("StatusCallback"), "auth": request.headers.get("Authorization", ""),
                    "garbage": fault == "garbage"})
        if fault == "garbage":
            return web.Response(text="{\"ok\": tru", content_type="application/json", status=201)
        return web.json_response({"sid": f"SM{self.counter:032x}", "status": "queued", "to": to}, status=201)

    async def list_messages(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        return web.json_response([m for m in self.messages if kind is None or m["kind"] == kind])

    async def clear(self, request: web.Request) -> web.Response:
        self.messages.clear()
        return web.json_response({"cleared": True})

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults)

    async def set_faults(self, request: web.Request) -> web.Response:
        changes = await request.json() if request.can_read_body else {}
        unknown = set(changes) - set(DEFAULT_FAULTS)
        if unknown:
            return web.json_response({"error": f"unknown fault settings {sorted(unknown)}"}, status=400)
        self.faults = {**DEFAULT_FAULTS, **changes}
        return web.json_response(self.faults)


async def serve(host: str, port: int, record: Path | None, faults: dict | None) -> None:
    sandbox = Sandbox(record, faults)
    runner = web.AppRunner(sandbox.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    print(f"sandbox listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.sandbox", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--record", type=Path, default=None, help="append every accepted message to this JSONL file")
    args = p.parse_args(argv)
    faults = json.loads(os.environ["HERALD_SANDBOX_FAULTS"]) if os.environ.get("HERALD_SANDBOX_FAULTS") else None
    try:
        asyncio.run(serve(args.host, args.port, args.record, faults))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
