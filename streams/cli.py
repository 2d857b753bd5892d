"""The ``herald`` command: one entry point for the local stack, the pipeline's processes and its tools."""
from __future__ import annotations

import argparse
import sys
import textwrap

from herald.settings import describe

EPILOG = "settings (environment variables):\n" + describe()


def _add_up(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald up`: the whole local stack."""
    up = sub.add_parser("up", formatter_class=fmt, help="the whole local stack, with a demo stream and a live view",
                        description=textwrap.dedent("""\
            Start everything on this machine: Kafka (KRaft), the schema registry, PostgreSQL, the pipeline
            worker, the in-app sink and the API; register the schemas, create the topics, run a demo
            producer and show live counts of events, decisions, deliveries and dead letters.
            The first run downloads Kafka and the registry from Maven Central (a few minutes).
            Ctrl-C stops everything that `up` started.
            Herald's processes are supervised: one that exits or is killed is started again after 1 s,
            doubling up to 30 s while it keeps failing; `herald status` shows the restarts and last exits.

            examples:
              herald up                    # live view until Ctrl-C
              herald up --detach           # return once ready; `herald down` stops it
              herald up --no-demo          # no demo producer: publish your own with `herald produce`
              herald up --no-servers       # use the Kafka, registry and PostgreSQL you already run
              herald up --monitoring       # Prometheus too; the API's /status page shows the live rates
            """))
    up.add_argument("--detach", action="store_true", help="return once every part is ready, leaving it running")
    up.add_argument("--no-demo", action="store_true", help="do not start the demo producer")
    up.add_argument("--rate", type=float, default=None, help="demo events per second (default HERALD_DEMO_RATE, 20)")
    up.add_argument("--no-servers", action="store_true",
                    help="start no server: use the Kafka, registry and PostgreSQL answering at the HERALD_* addresses")
    up.add_argument("--monitoring", action="store_true",
                    help="start Prometheus (Debian's package) on HERALD_PROMETHEUS_PORT, scraping every Herald process "
                         "and alerting by infra/prometheus/alerts.yml; the API's /status page draws from it; "
                         "`herald down` stops it")


def _add_processes(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`down`, `status` and the long-running processes: `worker`, `sink`, `api`."""
    sub.add_parser("down", help="stop everything `herald up` started, supervisor first (data is kept)")
    sub.add_parser("status", help="each part: up or down, address, version, topics, restarts, consumer lag")
    worker = sub.add_parser("worker", help="run the pipeline worker (Faust) in the foreground")
    worker.add_argument("--instance-id", metavar="NAME",
                        help="join the consumer group as a static member called NAME (HERALD_WORKER_INSTANCE_ID): "
                             "restarted under the same NAME, the worker gets its partitions back at once; give "
                             "each worker its own NAME")
    sink = sub.add_parser("sink", help="run the delivery sink of one channel in the foreground")
    sink.add_argument("channel", choices=["email", "push", "sms", "inapp", "websocket"],
                      help="the channel: email (SMTP), push (FCM HTTP v1), sms (Twilio REST), inapp (PostgreSQL); "
                           "websocket is not available yet")
    sub.add_parser("api", help="run the query API in the foreground")


def _add_produce(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald produce`: JSON lines in, Avro events out."""
    produce = sub.add_parser("produce", formatter_class=fmt, help="publish JSON lines as Avro events",
                             description=textwrap.dedent("""\
            Read NotificationEvents as JSON lines (from files or standard input) and publish them as Avro
            to herald.events, keyed by user_id. event_id defaults to a new UUID, priority to NORMAL and
            occurred_at to now; times are milliseconds or ISO-8601. A bad line is reported with its
            number and skipped; the exit code is 1 if any line was bad.

            examples:
              echo '{"user_id": "u1", "type": "COMMENT", "title": "Hi", "body": "New comment"}' | herald produce
              herald produce events.jsonl --rate 100
              herald produce --demo --count 1000      # the demo mix, 1,000 events
            """))
    produce.add_argument("files", nargs="*", help="JSON-lines files (default: standard input)")
    produce.add_argument("--rate", type=float, default=0, help="events per second (default: as fast as possible)")
    produce.add_argument("--count", type=int, default=0, help="stop after this many events (0: all input)")
    produce.add_argument("--demo", action="store_true", help="publish the demo mix instead of reading input")
    produce.add_argument("--topic", default=None, help="topic (default: <prefix>events)")
    produce.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_tail(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald tail`: a topic's records as JSON lines."""
    tail = sub.add_parser("tail", formatter_class=fmt, help="print a topic's records as JSON lines",
                          description=textwrap.dedent("""\
            Decode a Herald topic's Avro records and print one JSON object a line: partition, offset,
            key and value. Dead letters print their reason headers and the original bytes.

            examples:
              herald tail herald.decisions --from-beginning --max 10
              herald tail herald.dlq --from-beginning --no-follow
              herald tail herald.delivery.inapp | jq .value.title
            """))
    tail.add_argument("topic")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record (default: only new ones)")
    tail.add_argument("--follow", action=argparse.BooleanOptionalAction, default=None,
                      help="keep waiting for new records (default: yes, or no with --from-beginning)")
    tail.add_argument("--max", type=int, default=0, help="stop after this many records")


def _add_token(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald token`: an API token, or the inbox link."""
    token = sub.add_parser("token", help="mint an API token for a user",
                           description="Mint an HS256 token for USER_ID with the local secret (at most 30 days).\n\n"
                                       "examples:\n  curl -H \"Authorization: Bearer $(herald token u1)\" "
                                       "http://127.0.0.1:8080/v1/users/u1/unread-count\n"
                                       "  herald token u1 --url      # the inbox page, signed in as u1",
                           formatter_class=fmt)
    token.add_argument("user_id")
    token.add_argument("--admin", action="store_true", help="scope admin: may act for any user")
    token.add_argument("--ttl", type=int, default=30 * 24 * 3600,
                       help="seconds until it expires, 1 to 2592000 (default 30 days)")
    token.add_argument("--url", action="store_true",
                       help="print the inbox page's address with the token in its fragment (HERALD_API_PORT)")


def _add_replay(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald replay`: re-drive a range of a topic, or dead letters."""
    replay = sub.add_parser("replay", formatter_class=fmt,
                            help="copy a range of a topic back into the pipeline, or re-drive dead letters",
                            description=textwrap.dedent("""\
            Copy records from a topic (default: herald.events) to a topic (default: herald.events), byte
            for byte with their keys, headers and timestamps, between two times or offsets. Safe by
            construction: into herald.events, an event that already has a decision in herald.decisions is
            left out (counted "already decided"), so only events the pipeline never decided go in: a
            backfill from an archive topic, events lost before they reached Kafka. --include-decided copies
            them too: the pipeline decides an event on its record's timestamp, so one within its dedup
            window is DEDUPLICATED and one sent alone gets the same delivery_id, which the sinks never
            send twice; but a batchable one past its dedup window joins the next open batch, which has a
            new delivery_id. Keys go to their home partition. Herald topics of different schemas
            (decisions into events, say) are refused.

            With --dlq, re-drive dead letters from herald.dlq back to the topic each came from (its
            herald.source.topic header, or --to): each is checked first with the current code, schemas and
            registry (decoded, and validated for events and preferences); one that still fails is refused,
            counted and reported by partition and offset, not sent. A re-driven record keeps its headers
            without herald.error.*, gains herald.replayed.from (<dlq>:<partition>:<offset>) and a new
            timestamp. Deliveries a sink dead-lettered (MAX_ATTEMPTS, IN_DOUBT, REJECTED, ...) are refused:
            they are final in the sinks' ledger. The exit status is 1 when any dead letter was refused.

            With --shadow, a what-if run: the real worker (`herald worker`, no sink) decides the range of
            herald.events again under its own topic prefix (<prefix>shadow.<run id>.), app id and data
            folder, with your --set overrides, after reading the live preferences and presence; it delivers
            nothing. Once every copied event has a final decision (or is still held past now: a digest,
            quiet hours, a schedule), its decisions are compared with the live ones by event_id: outcomes,
            notifications per user and channel, and every event whose fate changed (e.g. "BATCHED, alone"
            becoming "BATCHED, with 4 others"). A table is printed, a JSON and a CSV file written (their
            paths printed; --out chooses the folder), and the run's topics deleted (not with --keep). Its
            state starts empty: dedup keys, rate counts and batches from before --from are not known.

            WHEN is ISO-8601 (2026-11-23T10:00:00Z) or epoch milliseconds; or offsets: offset:N (every
            partition) or P:N,P:N (those partitions only). --from is inclusive; --until is inclusive for a
            time and exclusive for offsets. The end is never past the last record when the replay starts.

            examples:
              herald replay --from 2026-11-23T10:00:00Z --until 2026-11-23T11:00:00Z
              herald replay herald.events --to herald.events --since 2026-11-23T00:00:00Z
              herald replay herald.events --from 0:1200,3:980 --until 0:1300,3:1000
              herald replay archive.events --to herald.events --max 1000
              herald replay --dlq --dry-run                        # what would be re-driven or refused
              herald replay --dlq --reason SCHEMA_NOT_FOUND        # after registering the missing schema
              herald replay --dlq --reason INTERNAL --from 2026-11-23T10:00:00Z   # after a bug fix
              herald replay --shadow --set HERALD_BATCH_WINDOW_S=300 \
                  --from 2026-11-23T00:00:00Z --until 2026-11-24T00:00:00Z     # a 5-minute batch window?
              herald replay --shadow --set HERALD_RATE_PER_HOUR=20 --set HERALD_DIGEST_PERIOD_S=3600 \
                  --from 2026-11-23T10:00:00Z --until 2026-11-23T11:00:00Z --out reports/
            """))
    replay.add_argument("topic", nargs="?", default=None,
                        help="the topic to read (default: <prefix>events, or <prefix>dlq with --dlq)")
    replay.add_argument("--to", default=None,
                        help="destination topic (default: <prefix>events; with --dlq, each record's source topic)")
    replay.add_argument("--from", "--since", dest="since", metavar="WHEN", default=None,
                        help="where to start: a time or offsets (default: the beginning)")
    replay.add_argument("--until", "--to-time", dest="until", metavar="WHEN", default=None,
                        help="where to stop: a time or offsets (default: the records there when it starts)")
    replay.add_argument("--max", type=int, default=0, help="stop after reading this many records")
    replay.add_argument("--dlq", action="store_true", help="re-drive dead letters, checking each first")
    replay.add_argument("--reason", action="append", default=[], metavar="CODE",
                        help="with --dlq: only dead letters of this herald.error.reason (repeat for several)")
    replay.add_argument("--dry-run", action="store_true", help="with --dlq: check and count, send nothing")
    replay.add_argument("--include-decided", action="store_true",
                        help="into herald.events: copy the events already decided too (see above)")
    replay.add_argument("--shadow", action="store_true",
                        help="a what-if run of the range under other settings, compared with the live decisions")
    replay.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="with --shadow: a HERALD_* setting of the shadow worker (repeat for several)")
    replay.add_argument("--keep", action="store_true", help="with --shadow: keep the run's topics and data folder")
    replay.add_argument("--out", default=None, metavar="DIR",
                        help="with --shadow: the folder of the JSON and CSV reports (default: <state folder>/shadow)")
    replay.add_argument("--timeout", type=float, default=600,
                        help="with --shadow: seconds to wait for the shadow decisions (default 600)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_rebuild(sub: argparse._SubParsersAction, fmt: type) -> None:
    """`herald rebuild inbox`: the in-app tables from Kafka."""
    rebuild = sub.add_parser("rebuild", formatter_class=fmt,
                             help="rebuild the in-app inbox and its unread counts from Kafka after a database loss",
                             description=textwrap.dedent("""\
            Rebuild what PostgreSQL lost from what Kafka keeps. `herald rebuild inbox` applies the migrations
            the database lacks, then reads herald.delivery.inapp and herald.reads from their oldest record,
            in timestamp order, and applies each as the first time: a delivery request is inserted by the
            in-app sink's code (a delivery_id already there is skipped), a read, seen, archive or read-all
            by the API's code; the unread and unseen counts follow from the tables' triggers.

            It refuses to run over an inbox that holds notifications; --force empties it first. Rebuilt
            reads carry the rebuild's time, not the original one; what the topics no longer hold
            (retention) is not rebuilt. Stop the in-app sink and the API while it runs.

            examples:
              herald rebuild inbox                 # after PostgreSQL lost its data
              herald rebuild inbox --force         # empty the inbox tables and rebuild them
            """))
    rebuild.add_argument("what", choices=["inbox"], help="what to rebuild: inbox (notifications and unread counts)")
    rebuild.add_argument("--force", action="store_true", help="empty a non-empty inbox first")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="herald", formatter_class=fmt, epilog=EPILOG,
        description=textwrap.dedent("""\
            Herald: a Kafka-native notification pipeline.

            start here:
              herald up                  bring up Kafka, the registry, PostgreSQL, the pipeline, the
                                         in-app sink and the API, run a demo stream and show what flows
              herald tail herald.decisions --from-beginning   every decision, as JSON lines
              herald token demo-user-1   a token for the API
            """))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_up(sub, fmt)
    _add_processes(sub, fmt)
    _add_produce(sub, fmt)
    _add_tail(sub, fmt)
    _add_token(sub, fmt)
    _add_replay(sub, fmt)
    _add_rebuild(sub, fmt)

    # its options and help live in bench/run.py (`herald bench --help`); main() hands them over
    sub.add_parser("bench", add_help=False,
                   help="measure every benchmark figure on one broker in one run; writes bench/results/ and BENCHMARKS.md")
    return p


def _bench(argv: list[str]) -> int:
    """``herald bench``: bench/ is not an installed package, so it is imported from the checkout."""
    from infra.common import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from bench.run import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return _bench(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from streams import commands

    try:
        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except KeyboardInterrupt:
        return 130
    except commands.UserError as exc:
        print(f"herald {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
