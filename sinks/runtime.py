"""Building and running the sink of one channel: its provider, contact book, templates, breaker and ledger.

``run(settings, "EMAIL")`` is what ``herald sink email`` runs. It waits for PostgreSQL rather than exiting
when the database is not up yet, and logs ``sink <CHANNEL> consuming <topic>`` once it reads its topic.
The circuit breaker's state file is ``<state folder>/run/breaker-<channel>.json`` (see ``sinks/breaker.py``).
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from herald import paths
from herald.metrics import serve
from herald.settings import Settings
from sinks.breaker import Breaker
from sinks.contacts import ContactBook
from sinks.metrics import SinkMetrics
from sinks.runner import SinkRunner
from sinks.templates import Templates

log = logging.getLogger("herald.sink")

CHANNELS = ("EMAIL", "PUSH", "SMS", "INAPP")


def make_provider(settings: Settings, channel: str):
    timeout = settings.sink_send_timeout_s
    if channel == "EMAIL":
        from sinks.email import EmailProvider
        return EmailProvider(settings.smtp_url, settings.email_from, settings.email_unsubscribe_url,
                             settings.smtp_connections, timeout)
    if channel == "PUSH":
        from sinks.push import PushProvider
        return PushProvider(settings.push_url, settings.push_project, settings.push_token,
                            settings.sink_concurrency, timeout)
    if channel == "SMS":
        from sinks.sms import SmsProvider
        return SmsProvider(settings.sms_url, settings.sms_account, settings.sms_token, settings.sms_from,
                           settings.sink_concurrency, timeout, status_callback=settings.sms_status_callback_url)
    raise ValueError(f"no provider for channel {channel}")


async def open_pool(settings: Settings, max_size: int = 4) -> asyncpg.Pool:
    """A pool on ``HERALD_DATABASE_URL``, waiting (with a log line every few tries) until it answers."""
    pause = 0.5
    while True:
        try:
            return await asyncpg.create_pool(settings.database_url, min_size=1, max_size=max_size, timeout=10)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sink: PostgreSQL not answering (%s); again in %.1fs", type(exc).__name__, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10)


def build(settings: Settings, channel: str, pool: asyncpg.Pool, **kwargs) -> SinkRunner:
    """The runner of ``channel`` (EMAIL, PUSH, SMS, INAPP) on ``pool``; ``kwargs`` go to ``SinkRunner``."""
    channel = channel.upper()
    if channel == "INAPP":
        from sinks.inapp import InAppDeliverer
        return SinkRunner(settings, "INAPP", InAppDeliverer(pool), **kwargs)
    if channel not in CHANNELS:
        raise ValueError(f"no sink for channel {channel}")
    provider = kwargs.pop("provider", None) or make_provider(settings, channel)
    runner = SinkRunner(settings, channel, provider=provider, pool=pool, **kwargs)
    if runner.contacts is None:
        runner.contacts = ContactBook(settings, runner.codec)
    if runner.templates is None:
        runner.templates = Templates(settings.templates_dir or None)
    if runner.breaker is None:
        runner.breaker = Breaker(channel, provider.name, settings.sink_breaker_failures, settings.sink_breaker_open_s,
                                 state_path=paths.subdir("run") / f"breaker-{channel.lower()}.json")
    return runner


async def run(settings: Settings, channel: str) -> None:
    pool = await open_pool(settings, max_size=4)
    try:
        runner = build(settings, channel, pool)
        if settings.sink_metrics_port >= 0:
            runner.metrics = SinkMetrics()
            if runner.breaker is not None:
                runner.metrics.watch_breaker(runner.breaker)
            serve(runner.metrics.registry, settings.sink_metrics_port, f"sink-{channel.lower()}",
                  f"{settings.app_id}-sink-{channel.lower()}")
        waiting = (asyncio.ensure_future(runner.metrics.watch_retries(pool, runner.channel, settings.app_id))
                   if runner.metrics is not None and runner.ledger is not None else None)
        try:
            await runner.run()
        finally:
            if waiting is not None:
                waiting.cancel()
    finally:
        await pool.close()
