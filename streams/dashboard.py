"""The live view of ``herald up``: what flows through each topic, as it happens.

It tails Herald's topics from the moment it starts (its own consumer group, nothing committed), so
the counts are "since this view opened", asks the API for the sample user's unread count and shows
each supervised process: up, starting or restarting, its restarts and its last exit.
"""
from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import Counter, deque
from typing import Callable

from confluent_kafka import Consumer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from herald.dlq import reason_of
from herald.kafka import client_config
from herald.paths import subdir
from herald.settings import Settings
from herald.topics import CHANNELS
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from sinks.breaker import read_states
from streams.demo import SAMPLE_USER
from streams.supervisor import rows


class Flow:
    """Counts per topic and outcome, and the latest decisions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.events = 0
        self.outcomes: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, str]] = Counter()  # (channel, status)
        self.breakers: list[dict] = []  # the sinks' circuit breakers, as they last wrote them
        self.dead: Counter[str] = Counter()
        self.recent: deque[dict] = deque(maxlen=8)
        self.unread: dict | str = "…"
        self.processes: dict = {}

    def add(self, msg, codec: Codec) -> None:
        topic = msg.topic()
        t = self.settings.topic
        if topic == t("events"):
            self.events += 1
        elif topic == t("dlq"):
            self.dead[reason_of(msg.headers()).get("herald.error.reason", "?")] += 1
        elif topic == t("decisions"):
            try:
                decision = codec.decode(msg.value(), "Decision")
            except DecodeError:
                return
            self.outcomes[decision["outcome"] + ("" if decision.get("final", True) else " (waiting)")] += 1
            self.recent.appendleft(decision)
        elif topic == t("delivery.status"):
            try:
                status = codec.decode(msg.value(), "DeliveryStatus")
                self.statuses[status["channel"], status["status"]] += 1
            except DecodeError:
                return
        elif topic.startswith(t("delivery.")):
            self.deliveries[topic.rsplit(".", 1)[-1]] += 1

    def render(self) -> Group:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        counts = Table.grid(padding=(0, 2))
        counts.add_column(style="bold")
        counts.add_column(justify="right")
        counts.add_column(style="dim")
        counts.add_row("events in", str(self.events), f"{self.events / elapsed:.1f}/s")
        for outcome, n in sorted(self.outcomes.items()):
            counts.add_row(f"  decision {outcome}", str(n), "")
        for channel in CHANNELS:
            n = self.deliveries.get(channel.lower(), 0)
            if n:
                counts.add_row(f"  delivered → {channel.lower()}", str(n), "")
        for channel in CHANNELS:
            line = ", ".join(f"{s} {n}" for (c, s), n in sorted(self.statuses.items()) if c == channel)
            if line:
                counts.add_row(f"  sink {channel.lower()}", "", line)
        for breaker in self.breakers:
            state = breaker.get("state", "?")
            colour = "green" if state == "closed" else "yellow" if state == "half_open" else "red"
            counts.add_row(f"  circuit {breaker.get('channel', '?').lower()}", f"[{colour}]{state}[/]",
                           breaker.get("provider", ""))
        for reason, n in sorted(self.dead.items()):
            counts.add_row(f"  dead letter {reason}", str(n), "[yellow]bad input, kept in herald.dlq[/]")
        unread = (self.unread if isinstance(self.unread, str)
                  else f"{self.unread['unread']} unread, {self.unread['unseen']} unseen")
        counts.add_row(f"{SAMPLE_USER}", unread, "from the API")
        procs = Table(title="processes", expand=True)
        for col in ("process", "state", "detail"):
            procs.add_column(col, overflow="ellipsis", no_wrap=True)
        for name, label, detail in rows(self.processes, list(self.processes.get("processes", {}))):
            procs.add_row(name, label, detail)
        recent = Table(title="latest decisions", expand=True)
        for col in ("user", "outcome", "channels", "reason"):
            recent.add_column(col, overflow="ellipsis", no_wrap=True)
        for d in self.recent:
            outcome = d["outcome"] if d.get("final", True) else f"{d['outcome']} …"
            recent.add_row(d["user_id"], outcome, ",".join(c.lower() for c in d["channels"]), d["reason"])
        return Group(Panel(counts, title=f"Herald — flowing for {elapsed:.0f}s (Ctrl-C stops everything)"), procs,
                     recent)


def _unread(settings: Settings, token: str) -> dict | str:
    request = urllib.request.Request(f"http://127.0.0.1:{settings.api_port}/v1/users/{SAMPLE_USER}/unread-count",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=1) as r:
            return json.loads(r.read())
    except Exception as exc:  # noqa: BLE001 - the view shows the failure rather than dying
        return f"API not answering ({type(exc).__name__})"


def watch(settings: Settings, processes: Callable[[], dict] | None = None) -> None:
    """Show the view until interrupted; ``processes`` gives the supervisor's state (see streams.supervisor)."""
    from api import auth

    token = auth.mint(auth.signing_secret(settings), SAMPLE_USER)
    flow = Flow(settings)
    codec = Codec(Registry(settings.schema_registry_url))
    consumer = Consumer({**client_config(settings), "group.id": f"herald-view-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "latest"})
    consumer.subscribe([settings.topic(n) for n in ("events", "decisions", "dlq", "delivery.status",
                                                    *(f"delivery.{c.lower()}" for c in CHANNELS))])
    last_api = 0.0
    try:
        with Live(flow.render(), refresh_per_second=2, transient=False) as live:
            while True:
                for msg in consumer.consume(500, 0.25):
                    if not msg.error():
                        flow.add(msg, codec)
                if time.monotonic() - last_api > 1:
                    flow.unread = _unread(settings, token)
                    flow.processes = processes() if processes else {}
                    flow.breakers = read_states(subdir("run"))
                    last_api = time.monotonic()
                live.update(flow.render())
    finally:
        consumer.close()
