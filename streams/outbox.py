"""Where the pipeline's outputs go: confluent-kafka producers, committed before a batch's records are acked.

With exactly-once on (``HERALD_EXACTLY_ONCE``) each input partition has a transactional
producer of its own (``transactional.id`` = ``<app id>-p<partition>``). Everything a batch's records of a
partition cause, outputs and the users' new states in the changelog alike, is one Kafka transaction,
committed at the end of the batch (``commit``); the states reach RocksDB only after that. A worker killed
mid-batch leaves an aborted transaction, invisible to every reader (they read committed records only), so
the records read again are decided once. A worker that takes a partition over opens its producer first
(``claim``), which fences the previous owner's: a stopped worker that wakes up after its partitions moved
cannot commit what it was doing. Records sent outside a batch (a preferences record's dead letter) go
through a plain producer (``source`` None).

A transaction's records to the topics named by ``defer`` are queued in Python and produced only when the
batch commits (``commit``). A reader of committed records sees nothing of a partition past the first
record of a transaction still open there, so records produced to those topics while a batch is being
decided would hold up everything written after them to the same partitions: the CRITICAL delivery
requests included, which ``express`` sends at once, on an idempotent producer of their own, outside any
transaction (``streams.express``). Only the delivery topics need it, so only they wait (the rest of a
batch's outputs go to librdkafka as they are made, not held in Python). The batch's commit waits for the
express records to be acknowledged first: a request that could not be written fails the batch.

With exactly-once off, everything goes through the plain producer and is flushed at the end of the batch:
an output is in Kafka before the offset of the record that caused it can be committed, so a crash loses
nothing but may write a batch's outputs twice (identical records).

librdkafka's produce costs a few microseconds where an awaited aiokafka send costs tens, which is why the
outputs do not go through Faust's producer. The plain producer's messages never time out in the queue
(``message.timeout.ms`` 0): while the broker is away the flush waits, and so does the batch, instead of
dropping anything; a transaction that cannot be committed within ``TRANSACTION_TIMEOUT_MS`` fails the batch
(the worker stops and its records are read again).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from confluent_kafka import KafkaException, Producer

from herald.kafka import make_producer, produce
from herald.settings import Settings

log = logging.getLogger("herald.outbox")


# The largest record the outbox sends: the states' changelog is created to take records this large, so a
# user's state a little over the usual 1 MB record limit is still written rather than failing the batch.
MAX_RECORD_BYTES = 8 * 1024 * 1024


TRANSACTION_TIMEOUT_MS = 120_000


class Outbox:
    def __init__(self, bootstrap: "str | Settings", linger_ms: int = 20, transactional_id: str | None = None) -> None:
        self._bootstrap = bootstrap
        self._config: dict[str, Any] = {"linger.ms": linger_ms, "batch.size": 1_000_000,
                                        "queue.buffering.max.messages": 1_000_000, "message.max.bytes": MAX_RECORD_BYTES}
        # made at first use: an outbox built and never used (as in tests) must not keep dialling the broker
        self._plain: Producer | None = None
        self._prefix = transactional_id
        self._txn: dict[int, Producer] = {}  # input partition -> its transactional producer
        self._open: set[int] = set()  # partitions with a transaction begun in this batch
        self._failed: list[str] = []
        self._defer: frozenset[str] = frozenset()  # topics whose transactional records wait for the commit
        self._deferred: list[tuple] = []  # a batch's records to those topics, produced at its commit
        self._express: Producer | None = None  # ``express``'s, made at its first use
        self._lock = threading.Lock()  # ``claim`` runs off the loop while a batch may be sending

    @property
    def _producer(self) -> Producer:
        if self._plain is None:
            self._plain = make_producer(self._bootstrap, **self._config, **{"message.timeout.ms": 0})
        return self._plain

    @property
    def exactly_once(self) -> bool:
        return self._prefix is not None

    def _new_producer(self, source: int) -> Producer:
        producer = make_producer(self._bootstrap, **self._config, **{
            "transactional.id": f"{self._prefix}-p{source}", "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "message.timeout.ms": TRANSACTION_TIMEOUT_MS})
        producer.init_transactions(TRANSACTION_TIMEOUT_MS / 1000)  # fences a previous owner of the partition
        return producer

    def _open_producer(self, source: int) -> Producer:
        producer = self._txn[source] = self._new_producer(source)
        return producer

    def claim(self, partitions: Iterable[int]) -> None:
        """At an assignment (blocking: call off the loop): a fresh transactional producer for each of
        ``partitions``, the previous ones closed, except one a batch still has a transaction open on (it
        commits, or fails if it was fenced). Each open fences any other instance of the partition's id."""
        if not self.exactly_once:
            return
        wanted = set(partitions)
        with self._lock:
            for partition in list(self._txn):
                if partition not in self._open:  # one in a batch goes with the batch (it fails if fenced)
                    self._close(partition)
            # a fresh producer even for a partition kept: while this worker was away (stopped, or out of the
            # group) another may have owned it and fenced the old one. Opened at once, one thread each: the
            # tables' restore waits for them (``Pipeline.fence``), and each open is a round trip or more to
            # the transaction coordinator (longer when it must first finish the previous owner's transaction)
            fresh = sorted(wanted - set(self._txn))
            if fresh:
                with ThreadPoolExecutor(max_workers=len(fresh), thread_name_prefix="herald-claim") as pool:
                    opening = {partition: pool.submit(self._new_producer, partition) for partition in fresh}
                failed: BaseException | None = None
                for partition, future in opening.items():
                    try:  # one that opened holds its partition's id (it fenced the others): kept, not leaked
                        self._txn[partition] = future.result()
                    except Exception as exc:  # noqa: BLE001 - raised below, after the others are kept
                        failed = failed or exc
                if failed is not None:
                    raise failed

    def _close(self, partition: int) -> None:
        producer = self._txn.pop(partition)
        if partition in self._open:
            self._open.discard(partition)
            try:
                producer.abort_transaction(10)
            except KafkaException:
                pass  # fenced or gone: the transaction is aborted either way
        producer.flush(0)

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             headers: list | None = None, on_delivery: Callable[[Any, Any], None] | None = None,
             source: int | None = None) -> None:
        """Queue one record caused by a record of input partition ``source`` (None: not in a batch);
        ``on_delivery(err, msg)`` replaces the default report (which notes failures: a replacement must call
        ``failed`` for its errors). A record in a transaction has no default report: a record that fails makes
        the transaction's commit fail, and a report per record would cost the commit a Python call each."""
        if source is not None and self._prefix is not None:
            with self._lock:
                producer = self._txn.get(source) or self._open_producer(source)
                if source not in self._open:
                    producer.begin_transaction()  # local only: the broker hears of it at the first produce
                    self._open.add(source)
            if topic in self._defer:
                self._deferred.append((producer, topic, value, key, partition, headers, on_delivery))
            else:
                produce(producer, topic, value, key, partition=partition, headers=headers, on_delivery=on_delivery)
            return
        # the attribute first: once it is made, a record costs no call to the property
        produce(self._plain or self._producer, topic, value, key, partition=partition, headers=headers,
                on_delivery=on_delivery or self._delivered)

    def defer(self, topics: Iterable[str]) -> None:
        """Produce a transaction's records to ``topics`` only at its commit, so that ``express`` records sent
        to them meanwhile can be read at once."""
        self._defer = frozenset(topics)

    def express(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send one record at once, outside any transaction, on an idempotent producer that lingers for
        nothing. The next ``commit`` waits for it to be acknowledged (and fails if it was not); a batch that
        fails after this and is decided again sends it again, the same bytes."""
        if self._express is None:
            self._express = make_producer(self._bootstrap, **{**self._config, "linger.ms": 0,
                                                              "message.timeout.ms": 0})
        produce(self._express, topic, value, key, on_delivery=self._delivered)
        self._express.poll(0)

    def _delivered(self, err, msg) -> None:  # noqa: ANN001
        if err is not None:
            self.failed(f"{msg.topic()}: {err}")

    def failed(self, what: str) -> None:
        """Note an output that could not be delivered: the next ``flush`` raises."""
        self._failed.append(what)

    async def flush(self) -> None:
        """Wait until every record queued on the plain producer is acknowledged (without blocking the loop)."""
        remaining = 0
        if self._plain is not None:
            self._plain.poll(0)
            if len(self._plain):
                remaining = await asyncio.get_running_loop().run_in_executor(None, self._plain.flush, 3600)
        self._raise_failures(remaining)

    async def commit(self) -> None:
        """End the batch: wait for the records sent by ``express``, flush the plain producer, then produce the
        records held back (``defer``) and commit every transaction begun, at once, in threads. Raises when a record
        or a transaction could not be written: the batch must then not be acked."""
        if self._express is not None and len(self._express):
            await asyncio.get_running_loop().run_in_executor(None, self._express.flush, 3600)
        await self.flush()
        deferred, self._deferred = self._deferred, []
        for producer, topic, value, key, partition, headers, report in deferred:
            produce(producer, topic, value, key, partition=partition, headers=headers, on_delivery=report)
        if not self._open:
            return
        with self._lock:  # the partitions stay open (``claim`` leaves them be) until their commit is over
            opened = [self._txn[p] for p in sorted(self._open)]
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(None, self._commit, producer) for producer in opened))
        finally:
            with self._lock:
                self._open.clear()
        self._raise_failures(0)

    @staticmethod
    def _commit(producer: Producer) -> None:
        producer.flush(TRANSACTION_TIMEOUT_MS / 1000)  # serves the delivery reports (changelog offsets)
        producer.commit_transaction(TRANSACTION_TIMEOUT_MS / 1000)

    def _raise_failures(self, remaining: int) -> None:
        if remaining or self._failed:  # failures reported before this flush count too
            failed, self._failed = self._failed, []
            raise KafkaException(f"{remaining} outputs not delivered; failures: {failed[:5]}")
