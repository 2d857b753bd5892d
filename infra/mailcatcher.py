"""A local SMTP server that accepts and records every message: the email sink's stand-in for a mail system.

Never part of a production path: ``herald up`` starts it on :2525, tests on free ports. Run
``python -m infra.mailcatcher [--port 2525] [--http-port 2526] [--record FILE]``; it prints
``mailcatcher listening on smtp://HOST:PORT`` when ready.

- Every accepted message is kept (the newest 100,000) with its envelope, ``Message-ID``, ``Subject`` and
  raw bytes, listed as JSON by ``GET http://HOST:HTTP_PORT/messages`` (``DELETE`` forgets them) and appended
  to ``--record`` as JSON lines when given.
- A recipient whose local part starts with ``defer`` is answered 451 (retryable), ``reject`` 550
  (permanent): a way to make the sink's outcomes happen on demand.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP


class Catcher:
    def __init__(self, record: Path | None = None, keep: int = 100_000) -> None:
        self.messages: deque[dict] = deque(maxlen=keep)
        self.record = open(record, "a", buffering=1) if record else None
        self.parser = BytesHeaderParser(policy=default_policy)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("defer"):
            return "451 4.3.0 try again later"
        if local.startswith("reject"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content or b""
        headers = self.parser.parsebytes(raw)
        message = {"at": time.time(), "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                   "message_id": str(headers.get("Message-ID", "")), "subject": str(headers.get("Subject", "")),
                   "size": len(raw), "raw": raw.decode("utf-8", errors="replace")}
        self.messages.append(message)
        if self.record:
            self.record.write(json.dumps(message) + "\n")
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, http_port: int, record: Path | None) -> None:
    catcher = Catcher(record)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(catcher, hostname="herald-mailcatcher", loop=loop,
                                                   data_size_limit=10 * 1024 * 1024), host, port,
                                      reuse_address=True)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(list(catcher.messages))

    async def clear(request: web.Request) -> web.Response:
        catcher.messages.clear()
        return web.json_response({"cleared": True})

    app = web.Application()
    app.router.add_get("/messages", listing)
    app.router.add_delete("/messages", clear)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port, reuse_address=True).start()
    print(f"mailcatcher listening on smtp://{host}:{port} (messages: http://{host}:{http_port}/messages)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.mailcatcher", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--http-port", type=int, default=2526)
    p.add_argument("--record", type=Path, default=None, help="append every message to this JSONL file")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.http_port, args.record))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
