"""What the delivery tests share: the local provider stand-ins as real servers, a sink run in the test's
event loop against the real broker, registry and database, and readers of what came out."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from herald import dlq
from herald.kafka import make_producer
from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra.common import REPO_ROOT
from schemas.codec import Codec
from schemas.registry import Registry


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m infra.sandbox`` or ``infra.mailcatcher`` as a subprocess on free ports."""

    def __init__(self, module: str, logdir: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()
        argv = [sys.executable, "-m", module, "--port", str(self.port)]
        if module == "infra.mailcatcher":
            argv += ["--http-port", str(self.http_port)]
        else:
            self.http_port = self.port
        self.log = logdir / f"{module.split('.')[-1]}-{self.port}.log"
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "listening" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def settings_for(unique: str, **overrides) -> Settings:
    # the default send timeout: a loaded machine (CI) can take 2 s to answer a local provider, and a test
    # asserting every status is SENT then sees RETRYING first; tests of timeouts set their own
    base = dict(topic_prefix=f"{unique}.", app_id=f"{unique}-app", sink_retry_base_s=0.2, sink_retry_max_s=1.0,
                sink_send_timeout_s=10.0, sink_breaker_open_s=1.0, partitions=2)
    base.update(overrides)
    settings = Settings.from_env(**base)
    ensure_topics(settings)
    register_schemas(settings)
    return settings


def request(user: str, channel: str, **fields) -> dict:
    r = {"delivery_id": f"{user}-{uuid.uuid4().hex[:12]}", "user_id": user, "channel": channel, "kind": "SINGLE",
         "event_ids": [uuid.uuid4().hex], "type": "COMMENT", "priority": "NORMAL", "title": "New comment",
         "body": "Ada replied to your comment", "data": {"action_url": "https://example.test/c/1"},
         "created_at": int(time.time() * 1000)}
    r.update(fields)
    return r


class Kafka:
    """Produces requests and contacts, and reads back statuses and dead letters of one test's topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = Codec(Registry(settings.schema_registry_url), max_bytes=10 * 1024 * 1024)
        self.producer = make_producer(settings.kafka_bootstrap, **{"message.max.bytes": 10_000_000})

    def send(self, channel: str, requests: list[dict], raw: list[bytes] | None = None) -> None:
        topic = self.settings.topic(f"delivery.{channel.lower()}")
        for r in requests:
            self.producer.produce(topic, self.codec.encode(f"{topic}-value", "DeliveryRequest", r), r["user_id"].encode())
        for value in raw or []:
            self.producer.produce(topic, value, b"raw")
        assert self.producer.flush(30) == 0

    def contact(self, user: str, email: str | None = None, phone: str | None = None, tokens=(), locale=None) -> dict:
        topic = self.settings.topic("contacts")
        c = {"user_id": user, "email": email, "phone": phone, "push_tokens": list(tokens), "locale": locale,
             "updated_at": int(time.time() * 1000)}
        self.producer.produce(topic, self.codec.encode(f"{topic}-value", "Contact", c), user.encode())
        assert self.producer.flush(30) == 0
        return c

    def read(self, name: str, decode: str | None = None) -> list:
        """Every record of topic ``name`` so far (decoded when ``decode`` names a schema)."""
        topic = self.settings.topic(name)
        c = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                      "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            meta = c.list_topics(topic, timeout=10).topics[topic]
            out = []
            for p in meta.partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high <= low:
                    continue
                c.assign([TopicPartition(topic, p, low)])
                while True:  # to the end by position: the worker's transactions end in markers, not records
                    m = c.poll(5)
                    if m is None:
                        break
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF and m.offset() >= high:
                            break
                        continue
                    if decode:
                        out.append(self.codec.decode(m.value(), decode))
                    else:
                        out.append({"key": m.key(), "value": m.value(), "headers": dlq.reason_of(m.headers()),
                                    "all_headers": m.headers() or []})
            return out
        finally:
            c.close()

    def statuses(self) -> list[dict]:
        return self.read("delivery.status", "DeliveryStatus")

    def dead_letters(self) -> list[dict]:
        return self.read("dlq")


async def wait_for(check, timeout: float = 30.0, every: float = 0.3):
    """``check()`` (sync or async) until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"not true within {timeout}s; last value: {last!r}")


@asynccontextmanager
async def running(runner):
    """The sink running as a task of this loop; stopped (and its errors raised) on exit."""
    task = asyncio.ensure_future(runner.run())
    try:
        await wait_for(lambda: task.done() or runner.consumer.assignment(), 30, 0.1)
        if task.done():
            task.result()
        yield task
        if not runner._stop.is_set():  # a sink the test did not stop must still be running
            assert not task.done(), f"the sink stopped: {task.exception() if task.done() else ''}"
    finally:
        runner.stop()
        try:
            await asyncio.wait_for(task, 20)
        except asyncio.CancelledError:
            pass


def by_id(statuses: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in statuses:
        out.setdefault(s["delivery_id"], []).append(s["status"])
    return out


class TcpProxy:
    """A TCP forwarder this test controls: ``down()`` drops every connection and refuses new ones until
    ``up()``. Lets a sink lose its database without stopping the shared server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
