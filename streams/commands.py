"""What each ``herald`` subcommand does. Parsing and help live in ``streams/cli.py``."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
import uuid
from datetime import datetime
from typing import Iterator

import orjson

from herald.settings import Settings


class UserError(Exception):
    """A mistake the user can fix; printed as one line without a traceback."""


def _settings() -> Settings:
    return Settings.from_env()


def _logging() -> None:
    """Log INFO and above to standard error, as text or JSON lines (HERALD_LOG_FORMAT, herald/logs.py)."""
    from herald import logs

    try:
        logs.configure(_settings().log_format, logging.INFO)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _quiet_clients()


def _quiet_clients() -> None:
    # aiokafka logs "Unable connect to node" and "Unable to update metadata" at ERROR on every retry while a
    # broker is away: a line per retry, which buries what else happened
    from herald import logs

    logs.quiet_repeats("aiokafka")


def _run_until_signal(main_coro_factory) -> None:
    async def runner():
        task = asyncio.ensure_future(main_coro_factory())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
    asyncio.run(runner())


def _require_kafka(settings: Settings, timeout: float = 5.0) -> None:
    """Fail in one line, not a traceback, when the broker does not answer (or refuses the login or the TLS
    handshake: ``herald.kafka.connection_problem`` says which)."""
    from herald.kafka import KafkaSecurityError, connection_problem

    try:
        problem = connection_problem(settings, timeout)
    except KafkaSecurityError as exc:
        raise UserError(str(exc)) from None
    if problem is not None:
        raise UserError(f"{problem} Start the stack with `herald up --detach` (or point HERALD_KAFKA_BOOTSTRAP "
                        "at your broker)")


# -- processes -------------------------------------------------------------------------------------

def _use_uvloop() -> None:
    """uvloop's event loop (libuv) for the worker: less overhead per awaited send and read."""
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


def cmd_worker(args: argparse.Namespace) -> int:
    from faust import Worker

    from herald import logs
    from herald.topics import ensure_topics
    from streams.worker import create_worker

    settings = _settings()
    if getattr(args, "instance_id", None):
        settings = dataclasses.replace(settings, worker_instance_id=args.instance_id)
    try:
        logging_config = logs.faust_logging_config(settings.log_format)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _require_kafka(settings)
    ensure_topics(settings)
    _use_uvloop()
    from schemas.registry import RegistryUnavailable

    try:
        app = create_worker(settings)
    except RegistryUnavailable as exc:
        raise UserError(str(exc)) from None
    if settings.worker_metrics_port >= 0:
        app.herald_pipeline.metrics.serve(settings.worker_metrics_port, settings.app_id)  # type: ignore[attr-defined]
    worker = Worker(app, loglevel="INFO", quiet=True, logging_config=logging_config)
    _quiet_clients()
    tune_gc()
    worker.execute_from_commandline()
    return 0


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running worker: what is loaded at start-up is never
    scanned again (``freeze``), and young objects are collected less often (a batch makes many).
    ``bench.digest_release`` runs with it too, to measure what the worker runs."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def cmd_sink(args: argparse.Namespace) -> int:
    _logging()
    channel = args.channel.upper()
    if channel == "WEBSOCKET":
        raise UserError("the websocket sink is not available yet: `herald sink` takes email, push, sms or inapp")
    from herald.topics import ensure_topics, register_schemas
    from sinks import runtime

    settings = _settings()
    _require_kafka(settings)
    ensure_topics(settings)
    register_schemas(settings)
    _run_until_signal(lambda: runtime.run(settings, channel))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    _logging()
    from api.app import run

    run(_settings())
    return 0


# -- stack -----------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from streams import stack

    return stack.up(_settings(), detach=args.detach, demo=not args.no_demo, rate=args.rate,
                    servers=not args.no_servers, monitoring=args.monitoring)


def cmd_down(args: argparse.Namespace) -> int:
    from streams import stack

    stack.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from streams import stack

    return stack.show_status(_settings())


# -- tools -----------------------------------------------------------------------------------------

def cmd_token(args: argparse.Namespace) -> int:
    from api import auth, inbox

    settings = _settings()
    if not 0 < args.ttl <= auth.MAX_TTL_S:
        raise UserError(f"--ttl must be from 1 to {auth.MAX_TTL_S} seconds (30 days)")
    try:
        token = auth.mint(auth.signing_secret(settings), args.user_id, admin=args.admin, ttl_s=args.ttl)
    except auth.WeakSecret as exc:
        raise UserError(str(exc)) from None
    print(inbox.url(settings.api_port, token) if getattr(args, "url", False) else token)
    return 0


def _lines(files: list[str]) -> Iterator[tuple[str, int, str]]:
    if not files:
        for n, line in enumerate(sys.stdin, 1):
            yield "<stdin>", n, line
        return
    for path in files:
        try:
            handle = open(path, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        with handle:
            for n, line in enumerate(handle, 1):
                yield path, n, line


def _producer_codec(settings: Settings, topic: str):  # noqa: ANN202 - (Codec, Producer)
    """The codec with the topic's schema registered, and a producer with Kafka's default partitioner (records
    land on the user's home partition directly); a clear error when the registry does not answer."""
    from herald.kafka import make_producer
    from schemas.codec import Codec
    from schemas.registry import Registry

    codec = Codec(Registry(settings.schema_registry_url))
    try:
        codec.registry.register(f"{topic}-value", "NotificationEvent")
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the schema registry at {settings.schema_registry_url} did not answer ({type(exc).__name__}); "
                        "is the stack up? (`herald up --detach` or `herald status`)") from None
    return codec, make_producer(settings, **{"linger.ms": 20})


def _demo_records(codec, topic: str) -> Iterator[tuple[bytes, bytes]]:  # noqa: ANN001
    from streams import demo

    for kind, payload in demo.stream(seed=int(time.time())):
        if kind == "bad":
            yield b"demo-user-2", payload
        else:
            event = {**payload, "occurred_at": int(time.time() * 1000)}
            yield payload["user_id"].encode(), codec.encode(f"{topic}-value", "NotificationEvent", event)


def _demo_contacts(settings: Settings, producer) -> None:  # noqa: ANN001
    """The demo users' contacts to herald.contacts, so the email, push and SMS sinks have addresses."""
    from herald.kafka import produce
    from schemas.codec import Codec
    from schemas.registry import Registry
    from streams import demo

    topic = settings.topic("contacts")
    codec = Codec(Registry(settings.schema_registry_url))
    now = int(time.time() * 1000)
    for user in demo.USERS:
        value = codec.encode(f"{topic}-value", "Contact", demo.contact(user, now))
        produce(producer, topic, value, user.encode())
    if producer.flush(30):
        raise UserError(f"the demo contacts were not acknowledged by Kafka at {settings.kafka_bootstrap}")


def _json_records(codec, topic: str, files: list[str], bad: list[int]) -> Iterator[tuple[bytes, bytes]]:  # noqa: ANN001
    """Events from JSON lines; a bad line is reported with its place and counted in ``bad[0]``."""
    from streams.events import EventError, from_json

    for where, n, line in _lines(files):
        if not line.strip():
            continue
        try:
            event = from_json(json.loads(line))
        except json.JSONDecodeError as exc:
            print(f"{where}:{n}: not JSON: {exc.msg} (column {exc.colno})", file=sys.stderr)
            bad[0] += 1
            continue
        except EventError as exc:
            print(f"{where}:{n}: {exc}", file=sys.stderr)
            bad[0] += 1
            continue
        yield event["user_id"].encode(), codec.encode(f"{topic}-value", "NotificationEvent", event)


def _progress(args: argparse.Namespace, topic: str):  # noqa: ANN202 - (Progress | None, task id)
    if args.quiet or not sys.stderr.isatty():
        return None, None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} events"),
                        TimeElapsedColumn(), transient=False)
    task = progress.add_task(f"producing to {topic}", total=args.count or None)
    progress.start()
    return progress, task


def cmd_produce(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from herald.kafka import produce

    settings = _settings()
    _require_kafka(settings)
    topic = args.topic or settings.topic("events")
    codec, producer = _producer_codec(settings, topic)
    failures: list[str] = []
    bad = [0]
    if args.demo:
        _demo_contacts(settings, producer)
    records = _demo_records(codec, topic) if args.demo else _json_records(codec, topic, args.files, bad)
    sent, started = 0, time.monotonic()
    progress, task = _progress(args, topic)
    try:
        for key, value in records:
            try:
                produce(producer, topic, value, key, on_delivery=lambda err, _msg: err and failures.append(str(err)))
            except KafkaException as exc:
                raise UserError(f"Kafka refused the record: {exc}") from None
            sent += 1
            producer.poll(0)
            if progress:
                progress.update(task, completed=sent)
            if args.rate and (delay := started + sent / args.rate - time.monotonic()) > 0:
                time.sleep(delay)
            if args.count and sent >= args.count:
                break
    finally:
        remaining = producer.flush(30)
        if progress:
            progress.stop()
    if remaining or failures:
        raise UserError(f"{remaining + len(failures)} events were not acknowledged by Kafka at {settings.kafka_bootstrap}"
                        + (f": {failures[0]}" if failures else ""))
    print(f"produced {sent} events to {topic} in {time.monotonic() - started:.1f}s"
          + (f"; {bad[0]} bad lines skipped" if bad[0] else ""), file=sys.stderr)
    return 1 if bad[0] else 0


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    raise TypeError


def render(msg, codec) -> dict:
    """One consumed record as a JSON-able dict: Avro decoded, dead letters with their reasons."""
    from herald.dlq import reason_of
    from schemas.codec import DecodeError
    from schemas.registry import RegistryUnavailable

    key = msg.key()
    out = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
           "timestamp": msg.timestamp()[1],
           "key": key.decode("utf-8", errors="replace") if key is not None else None}
    headers = reason_of(msg.headers())
    if "herald.error.reason" in headers:
        out["dead_letter"] = headers
        out["value_bytes"] = (msg.value() or b"").decode("utf-8", errors="replace")[:500]
        return out
    try:
        out["value"] = codec.decode(msg.value(), None) if msg.value() is not None else None
    except DecodeError as exc:
        out["undecodable"] = {"reason": exc.reason, "message": exc.message}
    except RegistryUnavailable as exc:
        raise UserError(f"cannot decode: {exc} (is the registry up? `herald status`)") from None
    return out


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from herald.kafka import client_config
    from schemas.codec import Codec
    from schemas.registry import Registry

    settings = _settings()
    _require_kafka(settings)
    follow = args.follow if args.follow is not None else not args.from_beginning
    consumer = Consumer({**client_config(settings), "group.id": f"herald-tail-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    meta = consumer.list_topics(args.topic, timeout=10)
    topic_meta = meta.topics.get(args.topic)
    if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
        raise UserError(f"no topic {args.topic!r} at {settings.kafka_bootstrap}; `herald status` lists the topics")
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    parts = [TopicPartition(args.topic, p, start) for p in topic_meta.partitions]
    consumer.assign(parts)
    codec = Codec(Registry(settings.schema_registry_url))
    at_end: set[int] = set()
    printed = 0
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if not follow and len(at_end) == len(parts):
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if not follow and len(at_end) == len(parts):
                        break
                    continue
                raise UserError(str(msg.error()))
            at_end.discard(msg.partition())
            sys.stdout.write(orjson.dumps(render(msg, codec), default=_json_default,
                                          option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
            sys.stdout.flush()
            printed += 1
            if args.max and printed >= args.max:
                break
    except BrokenPipeError:
        pass
    finally:
        consumer.close()
    return 0


def _when(text: str | None, default: int) -> int:
    if text is None:
        return default
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise UserError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 time") from None


def _replay_progress(args: argparse.Namespace, what: str):  # noqa: ANN202 - (on_plan, tick, stop)
    """A rich progress bar on standard error when it is a terminal (records read of those planned); no-ops
    otherwise, and with --quiet."""
    if args.quiet or not sys.stderr.isatty():
        return (lambda total: None), (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=False)
    task = progress.add_task(what, total=None)
    done = [0]
    progress.start()

    def on_plan(total: int) -> None:
        progress.update(task, total=min(total, args.max) if args.max else total)

    def tick(n: int) -> None:
        done[0] = n
        if n % 100 == 0:  # a redraw per record would cost more than the copy
            progress.update(task, completed=n)

    def stop() -> None:
        progress.update(task, completed=done[0])
        progress.stop()

    return on_plan, tick, stop


def _refused_line(msg, why: str, message: str) -> None:  # noqa: ANN001
    # place and reason only: a dead letter's key and value may hold personal data
    print(f"refused {msg.topic()}:{msg.partition()}:{msg.offset()} ({why}): {message}", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from streams import replay

    settings = _settings()
    _require_kafka(settings)
    source = args.topic or settings.topic("dlq" if args.dlq else "events")
    if not args.dlq and (args.reason or args.dry_run):
        raise UserError("--reason and --dry-run go with --dlq")
    if args.dlq and args.include_decided:
        raise UserError("--include-decided goes with a range replay, not --dlq")
    if args.shadow:
        return _replay_shadow(args, settings)
    if args.sets or args.keep or args.out:
        raise UserError("--set, --keep and --out go with --shadow")
    dest = args.to or settings.topic("events")
    if source == settings.topic("dlq") and not args.dlq:
        print("herald replay: copying dead letters as they are (error headers too); --dlq re-drives them to "
              "their source topics, checked first", file=sys.stderr)
    on_plan, tick, stop = _replay_progress(args, f"{'re-driving' if args.dlq else 'replaying'} {source}")
    try:
        start, end = replay.parse_position(args.since), replay.parse_position(args.until)
        if args.dlq:
            counts = replay.redrive(settings, source, args.to, set(args.reason), start, end, args.max, args.dry_run,
                                    tick=tick, on_plan=on_plan, on_refused=_refused_line)
        else:
            counts = replay.replay(settings, source, dest, start, end, args.max, tick=tick, on_plan=on_plan,
                                   include_decided=args.include_decided)
    except replay.ReplayError as exc:
        raise UserError(str(exc)) from None
    finally:
        stop()
    print(_replay_summary(args, source, dest, counts), file=sys.stderr)
    return 1 if counts.refused else 0


def _replay_shadow(args: argparse.Namespace, settings: Settings) -> int:
    """``herald replay --shadow``: the what-if run (streams/shadow.py), a table, a JSON and a CSV file."""
    from pathlib import Path

    from rich.console import Console

    from herald import paths
    from streams import replay, shadow

    if args.dlq or args.topic or args.to or args.include_decided or args.max:
        raise UserError("--shadow replays herald.events by time or offsets: no topic, --to, --dlq, --max "
                        "or --include-decided")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = not args.quiet and sys.stderr.isatty()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not show)
    task = progress.add_task("shadow run", total=None)

    def on_phase(what: str, total: int | None) -> None:
        progress.update(task, description=what, total=total, completed=0)

    def tick(n: int) -> None:
        progress.update(task, completed=n)

    try:
        sets = shadow.overrides(args.sets)
        start, end = replay.parse_position(args.since), replay.parse_position(args.until)
        with progress:
            result = shadow.run(settings, start, end, sets, keep=args.keep, timeout=args.timeout,
                                on_phase=on_phase, tick=tick)
    except replay.ReplayError as exc:
        raise UserError(str(exc)) from None
    meta = {**result.meta, "from": args.since, "until": args.until}
    shadow.render(result.report, Console())
    folder = Path(args.out) if args.out else paths.subdir("shadow")
    js, cs = shadow.write_files(result.report, meta, folder, result.run_id)
    unsettled = meta["unsettled"]
    print(f"shadow run {result.run_id}: {result.report.events} events, {len(result.report.changed)} changed"
          + (f", {unsettled} not settled within {args.timeout:g} s" if unsettled else "")
          + ("; kept its topics under " + result.shadow.topic_prefix if args.keep
             else f"; deleted its {len(result.deleted)} topics"), file=sys.stderr)
    print(f"report: {js}\nevents: {cs}", file=sys.stderr)
    return 1 if unsettled else 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """``herald rebuild inbox`` (streams/rebuild.py) with a progress bar of the records read."""
    from streams import rebuild

    settings = _settings()
    _require_kafka(settings)
    on_plan, tick, stop = _replay_progress(argparse.Namespace(quiet=args.quiet, max=0), "rebuilding the inbox")
    try:
        counts = asyncio.run(rebuild.rebuild_inbox(settings, force=args.force, tick=tick, on_plan=on_plan))
    except rebuild.RebuildError as exc:
        raise UserError(str(exc)) from None
    finally:
        stop()
    print(rebuild.summary(counts), file=sys.stderr)
    return 0


def _replay_summary(args: argparse.Namespace, source: str, dest: str, counts) -> str:  # noqa: ANN001
    sent = sum(counts.sent.values())
    where = ", ".join(f"{n} to {t}" for t, n in sorted(counts.sent.items())) or "none"
    if not args.dlq:
        return (f"replayed {sent} records from {source} to {dest}"
                + (f"; left out {counts.decided} already decided (--include-decided copies them)"
                   if counts.decided else ""))
    verb = "would re-drive" if args.dry_run else "re-drove"
    refused = ", ".join(f"{n} {why}" for why, n in sorted(counts.refused.items()))
    return (f"{verb} {sent} of {counts.read} dead letters from {source} ({where})"
            + (f"; refused {sum(counts.refused.values())} ({refused})" if refused else "")
            + (f"; {counts.skipped} of other reasons left" if counts.skipped else ""))
