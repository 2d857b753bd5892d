"""Every Herald setting, declared once with its default, its environment variable and what it means.

Read with ``Settings.from_env()``; ``herald <command> --help`` and ``docs/settings.md`` list them from
this table, so the documentation cannot drift from the code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse


def _flag(env: str, raw: str) -> bool:
    """A yes/no setting: 1, true, yes, on or 0, false, no, off (any case)."""
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{env}={raw!r}: say 1/true/yes/on or 0/false/no/off")


def _setting(default, env: str, doc: str):
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = _setting("127.0.0.1:9092", "HERALD_KAFKA_BOOTSTRAP", "Kafka bootstrap servers.")
    schema_registry_url: str = _setting("http://127.0.0.1:8081/apis/ccompat/v7", "HERALD_SCHEMA_REGISTRY_URL",
                                        "Confluent-compatible schema registry API.")
    database_url: str = _setting("postgresql://herald:herald@127.0.0.1:5432/herald", "HERALD_DATABASE_URL",
                                 "PostgreSQL for in-app notifications and the delivery ledger.")
    api_port: int = _setting(8080, "HERALD_API_PORT", "Port of the query API.")
    api_workers: int = _setting(0, "HERALD_API_WORKERS",
                                "Processes of `herald api` sharing its port (SO_REUSEPORT); 0 means one per core, at most 4.")
    api_host: str = _setting("127.0.0.1", "HERALD_API_HOST", "Address the query API listens on (0.0.0.0 in a container).")
    topic_prefix: str = _setting("herald.", "HERALD_TOPIC_PREFIX", "Prefix of every Herald topic.")
    jwt_secret: str = _setting("", "HERALD_JWT_SECRET",
                               "HS256 token signing secret; empty means the one generated into the state folder.")
    app_id: str = _setting("herald-pipeline", "HERALD_APP_ID",
                           "Faust application id: the consumer group (and `<id>-pipeline`, where the worker commits its "
                           "events offsets) and table prefix.")
    data_dir: str = _setting("", "HERALD_DATA_DIR",
                             "Where a worker keeps its RocksDB tables; empty: the state folder's faust/<app id>. "
                             "Workers of one app on one machine need one each.")
    worker_instance_id: str = _setting("", "HERALD_WORKER_INSTANCE_ID",
                                       "A worker's static membership name in its consumer group (Kafka's "
                                       "group.instance.id): a worker restarted under the same name gets its "
                                       "partitions back at once instead of after a rebalance, so a crash costs "
                                       "seconds; one that stops for good keeps them until its session times out "
                                       "(10 s). Give each worker its own, stable name (a StatefulSet pod's name); "
                                       "two live workers with one name fence each other. Empty: dynamic membership. "
                                       "`herald up` names its worker.")
    partitions: int = _setting(4, "HERALD_PARTITIONS", "Partitions of the topics Herald creates.")
    max_event_bytes: int = _setting(262144, "HERALD_MAX_EVENT_BYTES",
                                    "Largest accepted event record; larger ones are dead-lettered TOO_LARGE.")
    dedup_window_s: int = _setting(300, "HERALD_DEDUP_WINDOW_S",
                                   "A repeated event_id or dedup_key within this window is DEDUPLICATED.")
    dedup_window_by_type: str = _setting("", "HERALD_DEDUP_WINDOW_BY_TYPE",
                                         "Per-type dedup windows in seconds, e.g. 'COMMENT=60,SYSTEM=3600'; "
                                         "other types use HERALD_DEDUP_WINDOW_S.")
    batch_window_s: int = _setting(0, "HERALD_BATCH_WINDOW_S",
                                   "Batch window for every user, in seconds; 0 means each user's own (default 30).")
    digest_period_s: int = _setting(0, "HERALD_DIGEST_PERIOD_S",
                                    "Fixed digest period in seconds for every user; 0 means calendar periods "
                                    "(hourly, daily at the user's time, weekly).")
    rate_per_minute: int = _setting(10, "HERALD_RATE_PER_MINUTE", "Sends per user and channel per minute.")
    rate_per_hour: int = _setting(100, "HERALD_RATE_PER_HOUR", "Sends per user and channel per hour.")
    rate_per_day: int = _setting(500, "HERALD_RATE_PER_DAY", "Sends per user and channel per day.")
    global_rate_per_s: float = _setting(0.0, "HERALD_GLOBAL_RATE_PER_S",
                                        "Sends per second per channel (push, SMS, email) for one worker over all "
                                        "users, to spare the providers; over it a send waits (THROTTLED). 0: no limit.")
    tick_interval_s: float = _setting(1.0, "HERALD_TICK_INTERVAL_S",
                                      "How often held events, batches and digests are checked for release.")
    take_max: int = _setting(1000, "HERALD_TAKE_MAX",
                             "Records the pipeline takes at a time: each user's state is read and written once per batch.")
    take_within_s: float = _setting(0.1, "HERALD_TAKE_WITHIN_S",
                                    "Longest wait, in seconds, for a batch to fill before it is processed anyway. "
                                    "While events arrive slower than HERALD_TAKE_MAX in this time, each batch is one "
                                    "commit (a transaction per partition under HERALD_EXACTLY_ONCE): a longer wait "
                                    "gathers more events into each, so fewer commits and broker requests per event, "
                                    "and a non-CRITICAL event waits up to this long for its decision. CRITICAL "
                                    "events do not wait for it while the CRITICAL lane is on "
                                    "(HERALD_CRITICAL_EXPRESS); with the lane off, lower it.")
    release_chunk: int = _setting(2000, "HERALD_RELEASE_CHUNK",
                                  "Users released (batches, digests, held events) in one batch of records at most; "
                                  "more due ones follow after the events already waiting, so those are not held up.")
    fetch_max_wait_ms: int = _setting(100, "HERALD_FETCH_MAX_WAIT_MS",
                                      "Longest time the broker may hold the pipeline's fetch of events and ticks, "
                                      "and the CRITICAL lane's fetch of events, for records to arrive. A record "
                                      "arriving for a partition in the fetch ends the wait at once; one left out of "
                                      "the fetch in flight (newly assigned, resumed, or with records still buffered) "
                                      "waits at most this long. A quiet worker sends about 1000/this many fetches a "
                                      "second on each, and each costs the broker's CPU too.")
    fetch_min_bytes: int = _setting(1, "HERALD_FETCH_MIN_BYTES",
                                    "Bytes of events and ticks the broker gathers for the pipeline's fetch before "
                                    "answering it, waiting at most HERALD_FETCH_MAX_WAIT_MS. Raised (65536, say), a "
                                    "worker whose events trickle in decides fewer, larger batches: fewer transactions "
                                    "and broker requests per event, each non-CRITICAL event waiting up to that long, "
                                    "while the CRITICAL lane still decides CRITICAL events as they arrive, between "
                                    "batches too. Used only with HERALD_CRITICAL_EXPRESS on (1 otherwise).")
    faust_fetch_max_wait_ms: int = _setting(100, "HERALD_FAUST_FETCH_MAX_WAIT_MS",
                                            "The same for Faust's own consumer, which reads the preferences and "
                                            "presence topics and, while tables restore, their changelogs. A record "
                                            "arriving for a partition in the fetch ends the wait at once; one left out "
                                            "of the fetch in flight (newly assigned, resumed, or with records still "
                                            "buffered) waits at most this long. A short wait spends the worker's and "
                                            "the broker's CPU on fetches of quiet topics (Faust's own default is "
                                            "1,500 ms).")
    producer_linger_ms: int = _setting(20, "HERALD_PRODUCER_LINGER_MS",
                                       "How long the pipeline's outputs gather in its producer before a request goes "
                                       "to the broker. A batch of records flushes its outputs when it ends, so this "
                                       "adds no latency past the batch; a very short linger sends many small requests "
                                       "whose broker and producer threads compete with the workers for the cores.")
    exactly_once: bool = _setting(True, "HERALD_EXACTLY_ONCE",
                                  "Commit each batch's outputs and users' states as one Kafka transaction per input "
                                  "partition, so a worker that dies mid-batch writes no decision twice, and a worker "
                                  "that stopped for longer than its session (a zombie) cannot write once it wakes up: "
                                  "its successor's open fenced it. Readers of Herald's topics must read committed "
                                  "records only (librdkafka's default) and find a partition's end by position, not by "
                                  "its last record (a transaction marker). Off (at least once): outputs are flushed "
                                  "before states, a crash may write a batch's outputs twice, and a zombie's late state "
                                  "writes can overwrite its successor's in the changelog, so what the successor held "
                                  "for those users (open batches, digests) may be lost at the next restore.")
    critical_express: bool = _setting(True, "HERALD_CRITICAL_EXPRESS",
                                      "Decide CRITICAL events as they arrive, between the records of the batch in "
                                      "flight or while it commits, and send their delivery requests at once, outside "
                                      "the batch's transaction (their decisions and states still commit with it or "
                                      "the next batch), when that "
                                      "gives the decisions the read order gives. A request sent so is sent again "
                                      "if its batch fails, or by a zombie worker: the same bytes, which the sinks' "
                                      "ledger delivers once. Off: CRITICAL events wait for their batch's commit.")
    rocksdb_write_buffer_mb: int = _setting(8, "HERALD_ROCKSDB_WRITE_BUFFER_MB",
                                            "Memtable size of each table partition's RocksDB (two at most are "
                                            "kept). Faust's default, 64 MB x 3, let a worker's memory grow by "
                                            "hundreds of MB with a million users' states.")
    rocksdb_block_cache_mb: int = _setting(32, "HERALD_ROCKSDB_BLOCK_CACHE_MB",
                                           "Block cache that every table partition's RocksDB in the worker "
                                           "shares; the operating system's page cache holds the rest (Faust's "
                                           "default: 2 GB for each partition of each table).")
    rocksdb_memtables_mb: int = _setting(32, "HERALD_ROCKSDB_MEMTABLES_MB",
                                         "Memory all the worker's RocksDB memtables may take together (RocksDB's "
                                         "write buffer manager flushes the fullest past it), whatever the number "
                                         "of partitions.")
    standby_replicas: int = _setting(1, "HERALD_STANDBY_REPLICAS",
                                     "Standby copies of each partition's tables that other workers keep up to date, "
                                     "so a worker that takes a partition over has its state at hand. Each costs every "
                                     "worker a read and a write of the others' changes: workers sharing one machine "
                                     "do better with 0 (what `herald bench` runs), and a restarted worker gets its own "
                                     "partitions back without them (streams/sticky.py).")
    worker_metrics_port: int = _setting(0, "HERALD_WORKER_METRICS_PORT",
                                        "Port of a worker's Prometheus /metrics on 127.0.0.1; 0 picks a free one "
                                        "(`herald status` lists it); -1 serves none.")
    sink_metrics_port: int = _setting(0, "HERALD_SINK_METRICS_PORT",
                                      "Port of a sink's Prometheus /metrics on 127.0.0.1; 0 picks a free one "
                                      "(`herald status` lists it); -1 serves none.")
    presence_ttl_s: int = _setting(120, "HERALD_PRESENCE_TTL_S",
                                   "A connection not renewed within this many seconds counts as offline.")
    demo_rate: float = _setting(20.0, "HERALD_DEMO_RATE", "Events per second of the demo stream `herald up` starts.")
    smtp_url: str = _setting("smtp://127.0.0.1:2525", "HERALD_SMTP_URL",
                             "The email sink's SMTP server: smtp://host:port (STARTTLS when ?starttls=1), "
                             "smtps://host:port (TLS), with user:pass@ for AUTH.")
    email_from: str = _setting("Herald <herald@localhost>", "HERALD_EMAIL_FROM", "The From of every email.")
    email_unsubscribe_url: str = _setting("http://127.0.0.1:8080/inbox", "HERALD_EMAIL_UNSUBSCRIBE_URL",
                                          "The List-Unsubscribe link of every email (the user id is appended as ?user=).")
    smtp_connections: int = _setting(8, "HERALD_SMTP_CONNECTIONS",
                                     "SMTP connections the email sink keeps open and reuses, one message at a time each.")
    push_url: str = _setting("http://127.0.0.1:8090", "HERALD_PUSH_URL", "Base URL of the FCM HTTP v1 API.")
    push_project: str = _setting("herald-local", "HERALD_PUSH_PROJECT", "FCM project id.")
    push_token: str = _setting("", "HERALD_PUSH_TOKEN", "OAuth bearer token for FCM; empty sends none.")
    sms_url: str = _setting("http://127.0.0.1:8090", "HERALD_SMS_URL", "Base URL of the Twilio Messages REST API.")
    sms_account: str = _setting("ACherald", "HERALD_SMS_ACCOUNT", "Twilio account SID (basic-auth user).")
    sms_token: str = _setting("", "HERALD_SMS_TOKEN", "Twilio auth token (basic-auth password).")
    sms_from: str = _setting("+15005550006", "HERALD_SMS_FROM", "The From number of every SMS (E.164).")
    sms_status_callback_url: str = _setting("", "HERALD_SMS_STATUS_CALLBACK_URL",
                                            "Where Twilio posts each SMS's delivery status (its StatusCallback), with "
                                            "?delivery_id=<id> appended so a receipt names its delivery; empty: none.")
    templates_dir: str = _setting("", "HERALD_TEMPLATES_DIR",
                                  "Folder of Jinja2 templates <channel>/<name>.<part>.j2 that override the shipped ones.")
    sink_max_attempts: int = _setting(5, "HERALD_SINK_MAX_ATTEMPTS",
                                      "Attempts per delivery before it is DEAD and dead-lettered MAX_ATTEMPTS.")
    sink_batch_size: int = _setting(500, "HERALD_SINK_BATCH_SIZE", "Delivery requests a sink reads at a time.")
    sink_concurrency: int = _setting(64, "HERALD_SINK_CONCURRENCY", "Sends a sink has in flight at once.")
    sink_send_timeout_s: float = _setting(10.0, "HERALD_SINK_SEND_TIMEOUT_S",
                                          "A provider call not answered within this is a timeout (retried).")
    sink_retry_base_s: float = _setting(1.0, "HERALD_SINK_RETRY_BASE_S",
                                        "First retry delay; each later one doubles, with jitter.")
    sink_retry_max_s: float = _setting(300.0, "HERALD_SINK_RETRY_MAX_S", "Longest delay between two attempts.")
    sink_claim_lease_s: float = _setting(120.0, "HERALD_SINK_CLAIM_LEASE_S",
                                         "A ledger claim older than this with no outcome belongs to a process that "
                                         "died mid-send: the delivery is DEAD (IN_DOUBT), never sent again.")
    sink_breaker_failures: int = _setting(5, "HERALD_SINK_BREAKER_FAILURES",
                                          "Consecutive retryable failures of a provider that open its circuit.")
    sink_breaker_open_s: float = _setting(10.0, "HERALD_SINK_BREAKER_OPEN_S",
                                          "How long an open circuit waits before one probe request is let through.")
    allowed_origins: str = _setting("", "HERALD_ALLOWED_ORIGINS",
                                    "Comma-separated browser origins that may open the API's WebSocket stream "
                                    "(e.g. 'https://app.example.com'); empty means the API's own origin only "
                                    "(http://127.0.0.1:<port> and http://localhost:<port>).")
    kafka_security_protocol: str = _setting("PLAINTEXT", "HERALD_KAFKA_SECURITY_PROTOCOL",
                                            "How every Herald client talks to Kafka: PLAINTEXT, SSL (TLS), "
                                            "SASL_PLAINTEXT or SASL_SSL (SASL over TLS).")
    kafka_sasl_mechanism: str = _setting("PLAIN", "HERALD_KAFKA_SASL_MECHANISM",
                                         "SASL mechanism with a SASL_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = _setting("", "HERALD_KAFKA_SASL_USERNAME", "SASL user name (SASL_* protocols only).")
    kafka_sasl_password: str = _setting("", "HERALD_KAFKA_SASL_PASSWORD", "SASL password (SASL_* protocols only).")
    kafka_ssl_cafile: str = _setting("", "HERALD_KAFKA_SSL_CAFILE",
                                     "PEM file of the CA(s) that signed the brokers' certificates (SSL, SASL_SSL); "
                                     "empty: the system's CAs. The broker's name must match its certificate.")
    kafka_ssl_certfile: str = _setting("", "HERALD_KAFKA_SSL_CERTFILE",
                                       "PEM client certificate, for brokers that authenticate clients by TLS (mTLS).")
    kafka_ssl_keyfile: str = _setting("", "HERALD_KAFKA_SSL_KEYFILE",
                                      "PEM private key of HERALD_KAFKA_SSL_CERTFILE (unencrypted); empty when the "
                                      "certificate file holds the key too.")
    schema_registry_username: str = _setting("", "HERALD_SCHEMA_REGISTRY_USERNAME",
                                             "Basic-auth user for the schema registry (or put user:password@ in "
                                             "HERALD_SCHEMA_REGISTRY_URL; not both).")
    schema_registry_password: str = _setting("", "HERALD_SCHEMA_REGISTRY_PASSWORD", "Basic-auth password for the schema registry.")
    schema_registry_cafile: str = _setting("", "HERALD_SCHEMA_REGISTRY_CAFILE",
                                           "PEM file of the CA that signed an https:// registry's certificate; "
                                           "empty: the system's CAs.")
    topic_replication_factor: int = _setting(1, "HERALD_TOPIC_REPLICATION_FACTOR",
                                             "Replicas of each topic Herald creates (and of the worker's changelog "
                                             "topics); 1 suits the one-broker local stack, 3 a production cluster. "
                                             "Existing topics are left as they are.")
    topic_min_insync_replicas: int = _setting(1, "HERALD_TOPIC_MIN_INSYNC_REPLICAS",
                                              "min.insync.replicas of each topic Herald creates: a write is "
                                              "acknowledged once this many replicas have it (2 with a replication "
                                              "factor of 3). At most HERALD_TOPIC_REPLICATION_FACTOR.")
    prometheus_port: int = _setting(9090, "HERALD_PROMETHEUS_PORT",
                                    "Port of the Prometheus `herald up --monitoring` starts on 127.0.0.1.")
    prometheus_url: str = _setting("", "HERALD_PROMETHEUS_URL",
                                   "Prometheus the API's status page (/status) asks; empty: the local one, "
                                   "http://127.0.0.1:<HERALD_PROMETHEUS_PORT>.")
    log_format: str = _setting("text", "HERALD_LOG_FORMAT",
                               "Log lines of every Herald process: text, or json (one JSON object a line with "
                               "time, level, logger and message).")

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """The settings from the environment (a variable set to "" counts as unset), then ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                kind: Any = type(f.default)
                values[f.name] = _flag(f.metadata["env"], raw) if kind is bool else kind(raw)
        values.update(overrides)
        return cls(**values)

    @property
    def database_host_port(self) -> tuple[str, int]:
        url = urlparse(self.database_url)
        return url.hostname or "127.0.0.1", url.port or 5432

    def dedup_windows(self) -> dict[str, int]:
        """HERALD_DEDUP_WINDOW_BY_TYPE as {type: seconds}; raises ValueError saying what is wrong."""
        out = {}
        for part in filter(None, (p.strip() for p in self.dedup_window_by_type.split(","))):
            name, sep, seconds = part.partition("=")
            if not sep or not name.strip() or not seconds.strip().isdigit():
                raise ValueError(f"HERALD_DEDUP_WINDOW_BY_TYPE: {part!r} is not TYPE=SECONDS (e.g. COMMENT=60)")
            out[name.strip()] = int(seconds)
        return out

    def topic(self, name: str) -> str:
        """The full topic name of ``name`` ("events", "delivery.inapp", ...)."""
        return f"{self.topic_prefix}{name}"


def describe() -> str:
    """The settings table as text, for ``--help`` epilogues and docs."""
    lines = []
    for f in fields(Settings):
        lines.append(f"  {f.metadata['env']:<28} {f.metadata['doc']} (default: {f.default!r})")
    return "\n".join(lines)
