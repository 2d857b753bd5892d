"""The one sink runtime every channel shares: consume, claim, render, send, record, report, then commit.

A batch of ``herald.delivery.<channel>`` records goes through these steps, and its offsets are committed
only when every outcome is durable (ledger rows in PostgreSQL, status records and dead letters
acknowledged by Kafka):

1. Decode, with ``HERALD_MAX_EVENT_BYTES`` as the limit. A record that does not decode is dead-lettered
   with its reason; the others go on.
2. Claim each ``delivery_id`` in the ledger (``sinks/ledger.py``). One already SENT, SUPPRESSED or DEAD,
   waiting in the retry schedule, or being sent by another process is not sent again (a replay, a
   rebalance, a restart). Requests due for a retry are taken from the ledger and join the batch.
3. For each claimed request, independently: find the user's address in the contact book
   (``sinks/contacts.py``; none on this channel: SUPPRESSED), render it (``sinks/templates.py``), and
   send it through the provider, at most ``HERALD_SINK_CONCURRENCY`` at once and each within
   ``HERALD_SINK_SEND_TIMEOUT_S``.
4. Outcomes: SENT; a retryable failure (429, 5xx, timeout) is RETRYING with a due time in the ledger
   (exponential backoff with jitter, ``sinks/retry.py``), so the partition never waits for it, and after
   ``HERALD_SINK_MAX_ATTEMPTS`` attempts it is DEAD and dead-lettered ``MAX_ATTEMPTS``; a permanent one
   (4xx other than 429, an invalid address, a template error, an unreadable answer) is FAILED then DEAD
   at once and dead-lettered with its reason. While the provider's circuit (``sinks/breaker.py``) is open
   a request is not sent: it waits in the schedule (RETRYING, attempt not counted, error "circuit open").
   Every attempt writes one ``herald.DeliveryStatus``.

Nothing stops the loop. One request's failure is that request's status. Infrastructure trouble holds the
batch where it is, uncommitted, and tries again with backoff: PostgreSQL refusing a claim (nothing was
sent), PostgreSQL refusing the outcomes (they are kept and written again, never re-sent), the broker away
(the consumer keeps polling, status records are produced again until acknowledged, a failed commit is
made by the next one). The in-app channel has no provider: its batch insert is its ledger (the
notification's key is the ``delivery_id``); a batch PostgreSQL refuses is tried again one request at a
time, and a request still refused is DEAD with the database's reason.

The in-flight window: a process killed between its claim and its outcome leaves CLAIMED rows. They are
never sent again (the provider may have the message); after ``HERALD_SINK_CLAIM_LEASE_S`` any sink of the
channel marks them DEAD and dead-letters them ``IN_DOUBT``. Requests are claimed, sent and recorded in waves
of ``HERALD_SINK_CONCURRENCY``, at most ``WAVES_IN_FLIGHT`` (2) at once, so a kill leaves at most two waves in
doubt (some of them sent, some not).
A process killed after the ledger write and before its status records are acknowledged leaves those
outcomes unreported in the ledger: a lease later, the sink that reads the request again (or any sink of
the channel) writes their status records, so a status may arrive late, or twice, but is never lost. A
process alive and slower than the lease to report (Kafka away) may see its status written twice too; a
partition that moves while its owner is mid-batch does not (``sinks/ledger.py``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from herald import dlq
from herald.kafka import client_config, make_producer, produce
from herald.settings import Settings
from herald.topics import delivery_topic
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry
from sinks.ledger import Ledger, Mark, Source
from sinks.provider import PermanentError, Provider, TransientError
from sinks.retry import backoff

log = logging.getLogger("herald.sink")

# Waves claimed and not yet recorded at once: the in-doubt window after a kill is at most this many waves
# of HERALD_SINK_CONCURRENCY requests; more than one lets a wave's ledger round trips overlap another's sends.
WAVES_IN_FLIGHT = 2


@dataclass
class Outcome:
    """One attempt's result. ``reason`` is the dead-letter reason of a DEAD outcome; ``failed_first`` makes
    a permanent failure report FAILED before DEAD."""
    delivery_id: str
    status: str  # SENT, FAILED, RETRYING, DEAD, SUPPRESSED
    provider: str
    attempt: int = 1
    error: str | None = None
    reason: str | None = None
    failed_first: bool = False


Deliver = Callable[[list[dict]], Awaitable[list[Outcome]]]


@dataclass
class Job:
    """One request in flight through the runtime."""
    request: dict
    raw: bytes
    source: Source
    attempt: int = 1            # the attempt this pass makes
    done: set[str] = field(default_factory=set)
    from_kafka: bool = True


class Unavailable(Exception):
    """Infrastructure (PostgreSQL) is away: the batch is held and tried again."""


def _transient_db(exc: BaseException) -> bool:
    """Errors that say the database is away or busy, not that this request is wrong."""
    import asyncpg

    if isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError, asyncpg.InterfaceError,
                        asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state[:2] in ("08", "40", "53", "57", "58") or state == "55P03"
    return False


class SinkRunner:
    """One channel's sink. Give it either ``deliver`` (a batch callable that is its own ledger: in-app) or
    a ``provider`` with a ``pool`` (the ledger's database), a contact book and templates."""

    def __init__(self, settings: Settings, channel: str, deliver: Deliver | None = None, batch_size: int | None = None,
                 *, provider: Provider | None = None, pool=None, contacts=None, templates=None,
                 breaker=None, worker_id: str | None = None, retry_poll_s: float = 0.5) -> None:
        if (deliver is None) == (provider is None):
            raise ValueError("a sink needs exactly one of deliver (batch) or provider (per request)")
        self.settings = settings
        self.channel = channel
        self.deliver = deliver
        self.provider = provider
        self.contacts = contacts
        self.templates = templates
        self.breaker = breaker
        self.metrics: Any = None  # a SinkMetrics, when the sink serves its metrics
        self.batch_size = batch_size or settings.sink_batch_size
        self.topic = delivery_topic(settings, channel)
        self.codec = Codec(Registry(settings.schema_registry_url), max_bytes=settings.max_event_bytes)
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.ledger = (Ledger(pool, channel, self.worker_id, settings.sink_claim_lease_s, settings.app_id)
                       if provider else None)
        self.consumer = Consumer({
            **client_config(settings),
            "group.id": f"{settings.app_id}-sink-{channel.lower()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,  # a killed sink's partitions move on after this
            "heartbeat.interval.ms": 2000,
            "fetch.message.max.bytes": max(settings.max_event_bytes * 2, 1_048_576),
        })
        self.producer = make_producer(settings)
        self.status_topic = settings.topic("delivery.status")
        self.dlq_topic = settings.topic("dlq")
        self.stage = f"sink-{channel.lower()}"
        self.semaphore = asyncio.Semaphore(max(settings.sink_concurrency, 1))
        self.wave = max(settings.sink_concurrency, 1)
        self.retry_poll_s = retry_poll_s
        self.counts: dict[str, int] = {}
        self.delivered = 0
        self._stop = asyncio.Event()
        self._done: dict[tuple[str, int], int] = {}
        self._unreported: list[str] = []
        self._next_retry_poll = 0.0
        self._next_janitor = time.monotonic() + 5.0
        self._rng = random.Random()

    def stop(self) -> None:
        self._stop.set()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.provider is not None:
            await self.provider.start()
        if self.contacts is not None:
            self.contacts.start()
            if not await loop.run_in_executor(None, self.contacts.wait_ready, 60.0):
                log.warning("sink %s: contacts not read to their end in 60 s; going on with what is read",
                            self.channel)
        self.consumer.subscribe([self.topic])
        log.info("sink %s consuming %s", self.channel, self.topic)
        quiet_errors = 0.0
        try:
            while not self._stop.is_set():
                try:
                    messages = await loop.run_in_executor(None, self.consumer.consume, self.batch_size, 0.2)
                except KafkaException as exc:  # e.g. the broker away: keep polling
                    if time.monotonic() > quiet_errors:
                        log.warning("sink %s: consume failed (%s); polling on", self.channel, exc)
                        quiet_errors = time.monotonic() + 10
                    await asyncio.sleep(1)
                    continue
                errors = [m for m in messages if m.error()]
                for m in errors:
                    if m.error().code() != KafkaError._PARTITION_EOF and time.monotonic() > quiet_errors:
                        log.warning("sink %s: consumer says %s; polling on", self.channel, m.error())
                        quiet_errors = time.monotonic() + 10
                records = [m for m in messages if not m.error()]
                await self.handle(records)
        finally:
            # what was done, and only that: a batch interrupted by the stop is read again next time
            try:
                mine = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
            except KafkaException:
                mine = set()
            self._commit([TopicPartition(t, p, o) for (t, p), o in self._done.items() if (t, p) in mine],
                         asynchronous=False)
            self.consumer.close()
            await loop.run_in_executor(None, self.producer.flush, 10)
            if self.contacts is not None:
                self.contacts.stop()
            if self.provider is not None:
                await self.provider.close()

    async def handle(self, messages: list) -> None:
        """Deliver one batch (and any due retries), make every outcome durable, then commit the offsets."""
        jobs: list[Job] = []
        dead_letters: list[tuple] = []
        for msg in messages:
            src = Source(msg.topic(), msg.partition(), msg.offset(), msg.key(), list(msg.headers() or []))
            try:
                request = await self._hold(lambda msg=msg: self._decode(msg.value()), "schema lookup")
            except DecodeError as exc:
                dead_letters.append((src, msg.value(), exc.reason, exc.message))
                continue
            jobs.append(Job(request, msg.value(), src))
        outcomes: list[Outcome] = []
        if jobs:
            if self.deliver is not None:
                outcomes = await self._deliver_batch(jobs)
            else:
                outcomes = await self._deliver_each(jobs)
        if self.ledger is not None and time.monotonic() >= self._next_retry_poll:
            self._next_retry_poll = time.monotonic() + self.retry_poll_s
            for _ in range(max(self.batch_size // self.wave, 1)):
                due = await self._due_retries(self.wave)
                if not due:
                    break
                jobs += due
                outcomes += await self._deliver_each(due)
        outcomes += await self._in_doubt()
        by_id = {j.request["delivery_id"]: j for j in jobs}
        for o in outcomes:
            if o.status == "DEAD" and o.reason:
                job = by_id.get(o.delivery_id)
                if job is not None:
                    dead_letters.append((job.source, job.raw, o.reason, o.error or o.reason))
                elif getattr(o, "_raw", None) is not None:
                    dead_letters.append((o._src, o._raw, o.reason, o.error or o.reason))  # type: ignore[attr-defined]
        await self._report(outcomes, dead_letters)
        if self._unreported:
            ids, self._unreported = self._unreported, []
            await self._hold(lambda: self.ledger.reported(ids), "ledger reported")
        if messages:
            upto: dict[tuple[str, int], int] = {}
            for m in messages:
                key = (m.topic(), m.partition())
                upto[key] = max(upto.get(key, -1), m.offset() + 1)
            self._done.update(upto)
            self._commit([TopicPartition(t, p, o) for (t, p), o in upto.items()], asynchronous=True)

    # -- in-app: the batch is its own ledger ------------------------------------------------------

    async def _deliver_batch(self, jobs: list[Job]) -> list[Outcome]:
        requests = [j.request for j in jobs]
        pause = 0.5
        while True:
            try:
                return await self.deliver(requests)
            except Exception as exc:  # noqa: BLE001 - sorted below: the database away, or one bad request
                if _transient_db(exc):
                    log.warning("sink %s: database unavailable (%s); holding %d requests, again in %.1fs",
                                self.channel, type(exc).__name__, len(requests), pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 10)
                    continue
                log.warning("sink %s: a batch of %d failed (%s); delivering one at a time", self.channel,
                            len(requests), type(exc).__name__)
                return await self._one_by_one(requests)

    async def _one_by_one(self, requests: list[dict]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for r in requests:
            pause = 0.5
            while True:
                try:
                    outcomes += await self.deliver([r])
                    break
                except Exception as exc:  # noqa: BLE001
                    if _transient_db(exc):
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 10)
                        continue
                    message = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("sink %s: delivery %s refused: %s", self.channel, r.get("delivery_id"),
                                type(exc).__name__)
                    outcomes.append(Outcome(r["delivery_id"], "DEAD", "postgres", 1, message,
                                            reason="REJECTED", failed_first=True))
                    break
        return outcomes

    # -- per request, with the ledger -------------------------------------------------------------

    async def _deliver_each(self, jobs: list[Job]) -> list[Outcome]:
        """Claim, send and record in waves of ``self.wave`` (the send concurrency), so at most one wave is
        ever claimed without an outcome: that bounds what a kill leaves in doubt."""
        fresh: dict[str, Job] = {}
        refused: list[Outcome] = []
        for j in jobs:
            if j.from_kafka:
                r = j.request
                if "\x00" in r["delivery_id"] or "\x00" in r["user_id"]:
                    # PostgreSQL text cannot hold it: the ledger would refuse the whole wave for ever
                    refused.append(Outcome(r["delivery_id"], "DEAD", self.provider.name, 1,
                                           "REJECTED: a NUL character in delivery_id or user_id",
                                           reason="REJECTED", failed_first=True))
                    continue
                fresh.setdefault(r["delivery_id"], j)
        retries = [j for j in jobs if not j.from_kafka]
        items = list(fresh.items())
        depth = asyncio.Semaphore(WAVES_IN_FLIGHT)

        async def one_wave(wave: list[tuple[str, Job]]) -> list[Outcome]:
            async with depth:
                claimed, existing, unreported = await self._hold(lambda: self.ledger.claim(
                    [(d, j.request["user_id"], j.raw, j.source) for d, j in wave]), "ledger claim")
                outs = self._late(unreported)
                if existing:
                    found = Counter(existing.values())
                    log.debug("sink %s: not sent again: %s", self.channel, found)
                    self._count("SKIPPED", len(existing))
                    if self.metrics is not None:
                        for status, k in found.items():
                            self.metrics.ledger_conflicts.labels(self.channel, status).inc(k)
                return outs + await self._send_wave([j for d, j in wave if d in claimed])

        waves = await asyncio.gather(*(one_wave(items[i:i + self.wave]) for i in range(0, len(items), self.wave)))
        outcomes = refused + [o for w in waves for o in w]
        if retries:  # claimed by take_due already, one wave at a time
            outcomes += await self._send_wave(retries)
        return outcomes

    async def _send_wave(self, todo: list[Job]) -> list[Outcome]:
        if not todo:
            return []
        results = await asyncio.gather(*(self._attempt(j) for j in todo))
        marks = [m for _, m in results]
        await self._hold(lambda: self.ledger.record(marks, self.provider.name), "ledger record")
        self._unreported += [m.delivery_id for m in marks]
        return [o for outs, _ in results for o in outs]

    def _late(self, rows) -> list[Outcome]:
        """The status of outcomes the ledger has and Kafka may not (reported late, once more at worst)."""
        outs = []
        for r in rows:
            outs.append(Outcome(r["delivery_id"], r["status"], r["provider"] or self.provider.name, r["attempts"],
                                r["last_error"]))
            self._unreported.append(r["delivery_id"])
        if outs:
            log.info("sink %s: reporting %d outcomes a stopped process had not reported", self.channel, len(outs))
        return outs

    async def _hold(self, step: Callable[[], Any], what: str) -> Any:
        """Run ``step`` (sync or async) until it succeeds: the database or the registry away holds the batch,
        never drops it. A ``DecodeError`` is the record's fault and goes to the caller."""
        pause = 0.5
        while True:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    result = await result
                return result
            except DecodeError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("sink %s: %s failed (%s: %s); again in %.1fs", self.channel, what,
                            type(exc).__name__, str(exc)[:200], pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10)

    def _decode(self, value: bytes | None) -> dict:
        return self.codec.decode(value, "DeliveryRequest")

    async def _attempt(self, job: Job) -> tuple[list[Outcome], Mark]:
        r = job.request
        d = r["delivery_id"]
        name = self.provider.name
        n = job.attempt
        try:
            contact = self.contacts.get(r["user_id"]) if self.contacts is not None else None
            to = self.provider.recipient(contact)
            if to is None or to == [] or (isinstance(to, list) and not [t for t in to if t not in job.done]):
                why = "no contact for this user" if contact is None else f"no {self.channel.lower()} address"
                return [Outcome(d, "SUPPRESSED", name, n, why)], Mark(d, "SUPPRESSED", n, why)
            rendered = self.templates.render(self.channel, r, contact) if self.templates is not None else {}
        except PermanentError as exc:
            return self._permanent(d, n, exc.reason, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug with this request must not stop the sink
            log.exception("sink %s: preparing %s failed", self.channel, d)
            return self._permanent(d, n, "INTERNAL", f"{type(exc).__name__}: {exc}")
        if self.breaker is not None and not self.breaker.allow():
            delay = max(self.breaker.retry_at - time.time(), 0) + self._rng.uniform(0, 1)
            why = f"circuit open: {self.channel.lower()}/{name} not asked until the breaker's probe"
            return [Outcome(d, "RETRYING", name, n - 1, why)], Mark(d, "RETRYING", n - 1, why, delay, job.done)
        try:
            async with self.semaphore:
                started = time.perf_counter()
                try:
                    sent = await asyncio.wait_for(self.provider.send(r, rendered, to, set(job.done)),
                                                  self.settings.sink_send_timeout_s * 1.5 + 1)
                finally:
                    if self.metrics is not None:
                        self.metrics.provider_seconds.labels(self.channel).observe(time.perf_counter() - started)
        except (TransientError, asyncio.TimeoutError, OSError) as exc:
            if self.breaker is not None:
                self.breaker.failure()
            done = job.done | getattr(exc, "done", set())
            self._unregister(r["user_id"], getattr(exc, "unregistered", []))
            message = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                message = f"timeout after {self.settings.sink_send_timeout_s:g}s"
            if n >= self.settings.sink_max_attempts:
                return ([Outcome(d, "DEAD", name, n, f"{message} (attempt {n} of {n})", reason="MAX_ATTEMPTS")],
                        Mark(d, "DEAD", n, message, 0, done))
            delay = backoff(n, self.settings.sink_retry_base_s, self.settings.sink_retry_max_s,
                            getattr(exc, "retry_after", None), self._rng)
            return [Outcome(d, "RETRYING", name, n, message)], Mark(d, "RETRYING", n, message, delay, done)
        except PermanentError as exc:
            if self.breaker is not None:
                self.breaker.success()  # it answered: it is up
            self._unregister(r["user_id"], exc.unregistered)
            return self._permanent(d, n, exc.reason, exc.message)
        except Exception as exc:  # noqa: BLE001
            log.exception("sink %s: provider %s raised on %s", self.channel, name, d)
            return self._permanent(d, n, "INTERNAL", f"{type(exc).__name__}: {exc}")
        if self.breaker is not None:
            self.breaker.success()
        self._unregister(r["user_id"], sent.unregistered)
        return [Outcome(d, "SENT", name, n, sent.note)], Mark(d, "SENT", n, sent.note, 0, job.done | sent.done)

    def _permanent(self, d: str, n: int, reason: str, message: str) -> tuple[list[Outcome], Mark]:
        error = f"{reason}: {message}"[:1000]
        return ([Outcome(d, "DEAD", self.provider.name, n, error, reason=reason, failed_first=True)],
                Mark(d, "DEAD", n, error))

    def _unregister(self, user_id: str, tokens: list[str]) -> None:
        if not tokens or self.contacts is None:
            return
        contact = self.contacts.get(user_id)
        if contact is None:
            return
        left = [t for t in contact.get("push_tokens") or [] if t not in set(tokens)]
        if left != list(contact.get("push_tokens") or []):
            try:
                self.contacts.update({**contact, "push_tokens": left})
            except Exception:  # noqa: BLE001 - the token fails again next time and is removed then
                log.exception("sink %s: could not write the updated contact", self.channel)

    async def _due_retries(self, limit: int) -> list[Job]:
        try:
            rows = await self.ledger.take_due(limit)
        except Exception as exc:  # noqa: BLE001 - the database away: the schedule waits for it
            log.warning("sink %s: could not read due retries (%s)", self.channel, type(exc).__name__)
            return []
        jobs = []
        for row in rows:
            src = Source.from_json(row["source"])
            try:
                request = self.codec.decode(row["request"], "DeliveryRequest")
            except Exception:  # noqa: BLE001 - it decoded when it was scheduled: a registry outage, try later
                await self._hold(lambda row=row: self.ledger.record(
                    [Mark(row["delivery_id"], "RETRYING", row["attempts"], "registry unavailable", 5.0,
                          set(row["done"] or []))], self.provider.name), "ledger record")
                continue
            jobs.append(Job(request, row["request"], src, row["attempts"] + 1, set(row["done"] or []),
                            from_kafka=False))
        return jobs

    async def _in_doubt(self) -> list[Outcome]:
        if self.ledger is None or time.monotonic() < self._next_janitor:
            return []
        self._next_janitor = time.monotonic() + max(self.settings.sink_claim_lease_s / 4, 1.0)
        try:
            rows = await self.ledger.take_in_doubt()
            late = self._late(await self.ledger.take_unreported())
        except Exception:  # noqa: BLE001
            return []
        outs = late
        for row in rows:
            o = Outcome(row["delivery_id"], "DEAD", self.provider.name, row["attempts"] + 1,
                        "IN_DOUBT: the sending process stopped between claim and outcome", reason="IN_DOUBT")
            if row["request"] is not None:
                o._raw, o._src = row["request"], Source.from_json(row["source"])  # type: ignore[attr-defined]
            outs.append(o)
            self._unreported.append(o.delivery_id)
        return outs

    # -- reporting and committing -----------------------------------------------------------------

    def _count(self, status: str, n: int = 1) -> None:
        self.counts[status] = self.counts.get(status, 0) + n
        if self.metrics is not None:
            self.metrics.outcomes.labels(self.channel, status).inc(n)

    async def _report(self, outcomes: list[Outcome], dead_letters: list[tuple]) -> None:
        """Produce the status records and dead letters and wait until Kafka has every one of them."""
        pending: list[tuple] = []
        now_ms = int(time.time() * 1000)
        for o in outcomes:
            statuses = ["FAILED", "DEAD"] if o.failed_first and o.status == "DEAD" else [o.status]
            for s in statuses:
                record = {"delivery_id": o.delivery_id, "channel": self.channel, "status": s, "attempt": o.attempt,
                          "provider": o.provider, "error": o.error, "at": now_ms}
                value = await self._hold(lambda record=record: self.codec.encode(
                    f"{self.status_topic}-value", "DeliveryStatus", record), "status encoding")
                pending.append((self.status_topic, o.delivery_id.encode(), value, None))
            self._count(o.status)
            if o.status == "SENT":
                self.delivered += 1
        for src, raw, reason, message in dead_letters:
            value, headers = dlq.fit(raw, dlq.headers(reason, message, self.stage, src.topic, src.partition,
                                                      src.offset, src.headers))
            pending.append((self.dlq_topic, src.key, value, headers))
            self._count("DLQ")
        await self._produce_all(pending)

    async def _produce_all(self, records: list[tuple]) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.5
        while records:
            failed: list[tuple] = []

            def report(err, _msg, record):
                if err is None:
                    return
                if err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                                  KafkaError.RECORD_LIST_TOO_LARGE):
                    # the broker will never take it: producing it again would hold the sink for ever
                    log.error("sink %s: Kafka refused a record for good (%s); dropped", self.channel, err)
                    return
                failed.append(record)

            for rec in records:
                topic, key, value, headers = rec
                produce(self.producer, topic, value, key, headers=headers,
                        on_delivery=lambda err, msg, rec=rec: report(err, msg, rec))
            while True:
                left = await loop.run_in_executor(None, self.producer.flush, 5)
                if not left:
                    break
                log.warning("sink %s: %d records not yet acknowledged by Kafka; waiting", self.channel, left)
            if failed:
                log.warning("sink %s: %d records refused by Kafka; producing them again in %.1fs",
                            self.channel, len(failed), pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10)
            records = failed

    def _commit(self, offsets: list, asynchronous: bool) -> None:
        """Commit ``offsets`` (the ends of batches whose outcomes are durable). Asynchronous while running:
        librdkafka sends commits in order and a failed one is covered by the next; synchronous at the end."""
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            # the broker away or the group rebalancing: the next commit covers these offsets, and a record
            # read again meanwhile finds its outcome in the ledger
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("sink %s: commit failed (%s); the next one covers it", self.channel, exc.args[0])
