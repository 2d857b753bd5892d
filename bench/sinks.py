"""Each sink's rate to the local stand-ins, against a bare provider loop with no Herald in the same run.

For each channel it starts the mail catcher and the provider sandbox on free ports, writes one contact per
user and ``--count`` delivery requests to a new ``benchsinkXXXXXX.`` prefix, then runs the channel's sink
(the same runtime as ``herald sink``: decode, ledger claim, contact, template, send, ledger record, status
records, commit) over that backlog, and then the bare loop: aiosmtplib with as many connections, aiohttp
with as many requests in flight, one batch insert per 500 rows for in-app. It prints one line per channel:

    python -m bench.sinks --count 5000 --channels email,push,sms,inapp
    email   sink  5,000 in  …s =  … /s   bare aiosmtplib  … /s   (sink/bare …)
    ...

It also prints the CPU time this process spent per message (the sink's threads included; the stand-ins
run in processes of their own), which a loaded machine disturbs less than the rates. Figures only, no
pass/fail: the machine is shared and noisy. Needs the broker, registry and PostgreSQL
of ``HERALD_*`` (``herald up --detach``, or the test servers); deletes its topics afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(module: str, logdir: Path) -> tuple[subprocess.Popen, int, int]:
    port, http_port = _free_port(), _free_port()
    argv = [sys.executable, "-m", module, "--port", str(port)]
    if module == "infra.mailcatcher":
        argv += ["--http-port", str(http_port)]
    log = logdir / f"{module}.log"
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "listening" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{module} did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc, port, http_port


def _requests(prefix: str, channel: str, count: int, users: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"delivery_id": f"{prefix}{channel}-{i}", "user_id": f"{prefix}u{i % users}", "channel": channel,
             "kind": "SINGLE", "event_ids": [f"e{i}"], "type": "COMMENT", "priority": "NORMAL",
             "title": f"New comment {i}", "body": "Ada replied to your comment on the launch plan.",
             "data": {"action_url": f"https://example.test/c/{i}"}, "created_at": now} for i in range(count)]


def _seed(settings, channel: str, reqs: list[dict], users: int) -> None:
    from herald.kafka import make_producer
    from schemas.codec import Codec
    from schemas.registry import Registry

    codec = Codec(Registry(settings.schema_registry_url))
    producer = make_producer(settings, linger_ms=20)
    ctopic = settings.topic("contacts")
    prefix = settings.topic_prefix
    for u in range(users):
        uid = f"{prefix}u{u}"
        contact = {"user_id": uid, "email": f"user{u}@example.test", "phone": f"+1555{u:07d}",
                   "push_tokens": [f"tok-{u}"], "locale": None, "updated_at": int(time.time() * 1000)}
        producer.produce(ctopic, codec.encode(f"{ctopic}-value", "Contact", contact), uid.encode())
    topic = settings.topic(f"delivery.{channel.lower()}")
    for r in reqs:
        producer.produce(topic, codec.encode(f"{topic}-value", "DeliveryRequest", r), r["user_id"].encode())
        producer.poll(0)
    producer.flush(60)


async def _run_sink(settings, channel: str, count: int) -> tuple[float, float]:
    import asyncpg

    from sinks import runtime
    from sinks.breaker import Breaker

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    runner = runtime.build(settings, channel, pool, breaker=Breaker(channel, "bench", 10**9, 1.0))
    task = asyncio.ensure_future(runner.run())
    try:
        began = cpu = None
        deadline = time.monotonic() + 600
        while sum(runner.counts.get(s, 0) for s in ("SENT", "SUPPRESSED", "DEAD", "RETRYING")) < count:
            if task.done():
                task.result()
            if began is None and runner.counts:
                began, cpu = time.monotonic(), time.process_time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{channel}: {runner.counts} after 600 s")
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - (began or time.monotonic())
        cpu_s = time.process_time() - (cpu or time.process_time())
        if runner.counts.get("SENT", 0) < count:
            print(f"  note: {channel} outcomes {runner.counts}", file=sys.stderr)
        return elapsed, cpu_s
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
        await pool.execute("DELETE FROM delivery_ledger WHERE delivery_id LIKE $1", f"{settings.topic_prefix}%")
        await pool.execute("DELETE FROM notifications WHERE notification_id LIKE $1", f"{settings.topic_prefix}%")
        await pool.close()


async def _bare(settings, channel: str, reqs: list[dict]) -> tuple[str, float, float]:
    """The same sends with nothing of Herald's around them; (what, seconds, CPU seconds of this process)."""
    cpu = time.process_time()
    what, elapsed = await _bare_loop(settings, channel, reqs)
    return what, elapsed, time.process_time() - cpu


async def _bare_loop(settings, channel: str, reqs: list[dict]) -> tuple[str, float]:
    if channel == "EMAIL":
        import aiosmtplib

        from sinks.email import build

        port = int(settings.smtp_url.rsplit(":", 1)[1])
        clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
                   for _ in range(settings.smtp_connections)]
        for c in clients:
            await c.connect()
        queue: asyncio.Queue = asyncio.Queue()
        for r in reqs:
            queue.put_nowait(r)
        began = time.monotonic()

        async def worker(c):
            while not queue.empty():
                r = queue.get_nowait()
                data = build(r["delivery_id"], "h@example.test", "a@example.test", r["title"], r["body"],
                             f"<p>{r['body']}</p>", "http://x.test/")
                await c.sendmail("h@example.test", ["a@example.test"], data)

        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.monotonic() - began
        for c in clients:
            await c.quit()
        return "aiosmtplib", elapsed
    if channel in ("PUSH", "SMS"):
        import aiohttp

        sem = asyncio.Semaphore(settings.sink_concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=settings.sink_concurrency)) as s:
            began = time.monotonic()

            async def one(r):
                async with sem:
                    if channel == "PUSH":
                        body = json.dumps({"message": {"token": "t", "notification": {"title": r["title"],
                                                                                     "body": r["body"]}}})
                        async with s.post(f"{settings.push_url}/v1/projects/p/messages:send", data=body,
                                          headers={"Content-Type": "application/json"}) as resp:
                            await resp.read()
                    else:
                        async with s.post(f"{settings.sms_url}/2010-04-01/Accounts/AC/Messages.json",
                                          data={"To": "+15550000000", "From": "+15550000001", "Body": r["body"]},
                                          headers={"Authorization": "Basic QUM6dA=="}) as resp:
                            await resp.read()

            await asyncio.gather(*(one(r) for r in reqs))
            return "aiohttp", time.monotonic() - began
    import asyncpg

    from sinks.inapp import InAppDeliverer

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    bare = [{**r, "delivery_id": r["delivery_id"] + "-bare"} for r in reqs]
    began = time.monotonic()
    deliver = InAppDeliverer(pool)
    for i in range(0, len(bare), 500):
        await deliver(bare[i:i + 500])
    elapsed = time.monotonic() - began
    await pool.execute("DELETE FROM notifications WHERE notification_id LIKE $1", f"{settings.topic_prefix}%")
    await pool.close()
    return "asyncpg batch insert", elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="herald bench sinks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=5000, help="delivery requests per channel (default 5000)")
    p.add_argument("--users", type=int, default=1000, help="distinct users (contacts) per channel")
    p.add_argument("--channels", default="email,push,sms,inapp")
    p.add_argument("--keep", action="store_true", help="keep the bench topics")
    args = p.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from herald.settings import Settings
    from herald.topics import SPECS, ensure_topics, register_schemas
    from infra import postgres

    postgres.migrate()
    logdir = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    sandbox, sport, _ = _start("infra.sandbox", logdir)
    catcher, cport, _ = _start("infra.mailcatcher", logdir)
    results = {}
    try:
        for channel in [c.strip().upper() for c in args.channels.split(",") if c.strip()]:
            prefix = f"benchsink{uuid.uuid4().hex[:6]}."
            settings = Settings.from_env(topic_prefix=prefix, app_id=f"{prefix}app",
                                         smtp_url=f"smtp://127.0.0.1:{cport}", push_url=f"http://127.0.0.1:{sport}",
                                         sms_url=f"http://127.0.0.1:{sport}")
            ensure_topics(settings)
            register_schemas(settings)
            reqs = _requests(prefix, channel, args.count, args.users)
            _seed(settings, channel, reqs, args.users)
            sink_s, sink_cpu = asyncio.run(_run_sink(settings, channel, args.count))
            what, bare_s, bare_cpu = asyncio.run(_bare(settings, channel, reqs))
            sink_rate, bare_rate = args.count / sink_s, args.count / bare_s
            sink_us, bare_us = sink_cpu / args.count * 1e6, bare_cpu / args.count * 1e6
            results[channel] = {"count": args.count, "sink_per_s": round(sink_rate), "bare_per_s": round(bare_rate),
                                "sink_cpu_us": round(sink_us), "bare_cpu_us": round(bare_us), "bare": what}
            print(f"{channel.lower():<6} sink {args.count:,} in {sink_s:.2f}s = {sink_rate:,.0f}/s "
                  f"({sink_us:,.0f} us CPU each)   bare {what} {bare_rate:,.0f}/s ({bare_us:,.0f} us CPU each)   "
                  f"(sink/bare {sink_rate / bare_rate:.2f})", flush=True)
            if not args.keep:
                from confluent_kafka.admin import AdminClient

                from herald.kafka import client_config

                AdminClient(client_config(settings)).delete_topics(
                    [settings.topic(s.name) for s in SPECS])
    finally:
        sandbox.terminate()
        catcher.terminate()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
