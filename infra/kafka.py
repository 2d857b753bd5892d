"""Apache Kafka 4.x as one local process: KRaft, broker and controller combined.

Rules:
- The broker listens on ``HERALD_KAFKA_BOOTSTRAP`` (default ``127.0.0.1:9092``), its controller on the same
  host at ``HERALD_KAFKA_CONTROLLER_PORT`` (default 9093).
- Jars come from Maven Central (``infra/kafka/pom.xml``) into ``cache/kafka-<version>``; config, cluster id
  and data live in ``kafka/``; output goes to ``logs/kafka.log``.
- Storage is formatted once; a restart reuses the data and the cluster id.
- "Up" means the admin API answers a metadata request, whoever runs the broker: a Kafka already answering on
  the bootstrap address is used as it is, anything else holding the port is an error.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from infra.common import (
    InfraError,
    ServiceStatus,
    ensure_port_free,
    log_path,
    maven_fetch,
    port_open,
    read_pid,
    start_process,
    stop_group,
    stop_process,
    subdir,
    wait_until,
)

NAME = "kafka"
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
VERSION = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text()).group(1)  # type: ignore[union-attr]
RECOVERY_S = 600  # how long in all a broker still writing its log at start-up is waited for
JVM_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]

# Console goes to the log file (start_process redirects stdout). Log4j's own shutdown hook would stop
# logging half-way through the broker's controlled shutdown, hence shutdownHook = disable.
LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
"""
# These narrate every start-up step, partition, request or config: WARN only, except the "started" line.
LOGGER_LEVELS = {**dict.fromkeys(
    ["kafka.request.logger", "state.change.logger", "kafka.network", "kafka.server", "kafka.cluster",
     "org.apache.kafka.raft", "org.apache.kafka.image", "org.apache.kafka.server", "org.apache.kafka.controller",
     "org.apache.kafka.queue", "org.apache.kafka.clients", "org.apache.kafka.common.config",
     "org.apache.kafka.common.metrics", "org.apache.kafka.coordinator.common.runtime",
     "org.apache.kafka.storage.internals.log.UnifiedLog", "org.apache.kafka.storage.internals.log.ProducerStateManager"],
    "WARN"), "kafka.server.KafkaRaftServer": "INFO"}


def bootstrap() -> str:
    """The broker's address, ``host:port``, from ``HERALD_KAFKA_BOOTSTRAP`` (first entry if a list)."""
    return os.environ.get("HERALD_KAFKA_BOOTSTRAP", "127.0.0.1:9092").split(",")[0].strip()


def _host_port() -> tuple[str, int, int]:
    host, _, port = bootstrap().rpartition(":")
    cport = os.environ.get("HERALD_KAFKA_CONTROLLER_PORT", "9093")
    if not (port.isdigit() and cport.isdigit()):
        raise InfraError(f"{NAME}: HERALD_KAFKA_BOOTSTRAP={bootstrap()!r} must be host:port and "
                         f"HERALD_KAFKA_CONTROLLER_PORT={cport!r} a port number; fix the variable")
    return host or "127.0.0.1", int(port), int(cport)


def _lib() -> Path:
    return subdir("cache", f"kafka-{VERSION}")


def _admin() -> AdminClient:
    from herald.kafka import security_config
    from herald.settings import Settings

    # log_level 0 and a no-op error_cb: a broker that is not up yet must not flood stderr while we poll.
    # The security keys (none for PLAINTEXT) let `herald status` and `--no-servers` see a secured cluster.
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap(), "log_level": 0, "error_cb": lambda _e: None,
                            "socket.connection.setup.timeout.ms": 3000, **security_config(Settings.from_env())}
    return AdminClient(conf)


def _probe(timeout: float = 3.0) -> ClusterMetadata | None:
    """The cluster's metadata if a Kafka broker answers on the bootstrap address, else None."""
    host, port, _ = _host_port()
    if not port_open(host, port):
        return None
    try:
        return _admin().list_topics(timeout=timeout)
    except KafkaException:
        return None


def _ours_ready() -> bool:
    """True when the broker answering is the one formatted here (another one may hold the port for a moment)."""
    meta = _probe()
    return meta is not None and meta.cluster_id == _cluster_id()


def install(progress: Callable[[str], None] = print) -> None:
    """Fetch Kafka's jars and the log4j2 backend into the cache, once (Maven is only run when the pom changed)."""
    if shutil.which("mvn") is None:
        raise InfraError(f"{NAME}: `mvn` is not on PATH, so the Kafka jars cannot be fetched; "
                         f"install Maven (apt-get install maven)")
    maven_fetch(NAME, POM, _lib(), progress)


def _write_config(host: str, port: int, cport: int) -> tuple[Path, Path]:
    """Write server.properties and the log4j2 config (every start, so address changes apply)."""
    conf = subdir(NAME)
    data = subdir(NAME, "data")
    props = server_properties(host, port, cport, data)
    server = conf / "server.properties"
    server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    log4j = conf / "log4j2.properties"
    log4j.write_text(_log4j_text())
    return server, log4j


def _log4j_text() -> str:
    return LOG4J2 + "".join(f"logger.l{i}.name = {name}\nlogger.l{i}.level = {level}\n"
                            for i, (name, level) in enumerate(LOGGER_LEVELS.items()))


def server_properties(host: str, port: int, cport: int, data: Path) -> dict[str, str]:
    """The one-node broker's configuration: a PLAINTEXT listener on ``port``, the controller on ``cport``, data
    in ``data``. ``start_extra`` overrides entries of it (listeners, security) for a broker of a test's own."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        # one node: every internal topic must fit on it
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # 50 by default: 50 folders to create, load and log on a single test broker for nothing
        "offsets.topic.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
    }


def _cluster_id() -> str:
    """The cluster id kept in ``kafka/cluster.id``, made once (Kafka's format: 22 url-safe base64 chars)."""
    path = subdir(NAME) / "cluster.id"
    if not path.exists():
        while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
            pass  # Kafka refuses ids that look like a command-line flag
        path.write_text(cid)
    return path.read_text().strip()


def _java(log4j: Path) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise InfraError(f"{NAME}: `java` is not on PATH and Kafka {VERSION} needs Java 17+; "
                         f"install it (apt-get install openjdk-17-jre-headless)")
    return [java, *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{_lib()}/*"]


def _format(server: Path, log4j: Path) -> None:
    """Format the storage unless a previous run already did (``meta.properties`` is the proof)."""
    if (subdir(NAME, "data") / "meta.properties").exists():
        return
    argv = [*_java(log4j), "kafka.tools.StorageTool", "format", "--standalone",
            "-t", _cluster_id(), "-c", str(server)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    with open(log_path(NAME), "a") as log:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        last = ((result.stdout + result.stderr).strip().splitlines() or [""])[-1]
        raise InfraError(f"{NAME}: formatting the storage in {server.parent} failed (exit {result.returncode}): "
                         f"{last}; see {log_path(NAME)}, or delete {server.parent} to start from scratch")


def status() -> ServiceStatus:
    """Up when the admin API answers. ``detail``: topics (internal ``__*`` ones hidden), cluster id, and whether
    the broker is the process we started (``managed``, ``pid``) or someone else's."""
    pid = read_pid(NAME)
    meta = _probe()
    detail: dict = {"managed": pid is not None, "pid": pid, "log": str(log_path(NAME))}
    if meta is None:
        return ServiceStatus(NAME, False, bootstrap(), VERSION if pid else "", detail)
    detail["cluster_id"] = meta.cluster_id
    detail["topics"] = sorted(t for t in meta.topics if not t.startswith("__"))
    return ServiceStatus(NAME, True, bootstrap(), VERSION if pid else "external broker, version unknown", detail)


def start(progress: Callable[[str], None] = print, timeout: float = 90) -> ServiceStatus:
    """Make Kafka answer on the bootstrap address: reuse a broker already answering there, else start ours.

    ``detail["startup_s"]`` is the seconds from launching the JVM to readiness (0 when nothing was launched).
    A broker that does not answer within ``timeout`` is stopped again, so a failed start leaves nothing running;
    one still writing its log (loading many partitions after a restart) is given up to ``RECOVERY_S``.
    """
    host, port, cport = _host_port()
    pid, startup_s = read_pid(NAME), 0.0
    if pid is not None:  # ours, maybe still starting
        wait_until(_ours_ready, timeout, f"{NAME}: broker (pid {pid}) start", log_path(NAME), busy_up_to=RECOVERY_S)
    elif _probe() is not None:
        progress(f"{NAME}: a Kafka broker already answers on {bootstrap()}; using it")
    else:
        ensure_port_free(NAME, host, port, "HERALD_KAFKA_BOOTSTRAP")
        ensure_port_free(f"{NAME} controller", host, cport, "HERALD_KAFKA_CONTROLLER_PORT")
        install(progress)
        server, log4j = _write_config(host, port, cport)
        _format(server, log4j)
        progress(f"{NAME}: starting Kafka {VERSION} on {bootstrap()} (log: {log_path(NAME)})")
        t0 = time.monotonic()
        proc = start_process(NAME, [*_java(log4j), "kafka.Kafka", str(server)])
        try:
            wait_until(_ours_ready, timeout, f"{NAME}: broker start", log_path(NAME), proc, busy_up_to=RECOVERY_S)
        except InfraError:
            stop_process(NAME)
            raise
        startup_s = round(time.monotonic() - t0, 2)
    result = status()
    result.detail["startup_s"] = startup_s
    return result


def stop() -> bool:
    """Stop the broker we started (a controlled shutdown); a broker we merely reused is left alone."""
    return stop_process(NAME, timeout=60)


def create_topics(names: list[str], partitions: int = 4, config: dict | None = None) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are (whatever their partitions)."""
    if not names:
        return
    if _probe() is None:
        raise InfraError(f"{NAME}: no Kafka answers on {bootstrap()}, so topics {names} cannot be created; "
                         f"start it first (infra.kafka.start())")
    admin = _admin()  # must outlive the futures: a collected client cancels them
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, config=config or {}) for n in names],
                                  request_timeout=30)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise InfraError(f"{NAME}: creating topic {name!r} on {bootstrap()} failed: {err.str()}") from None


# -- a broker of a test's own ------------------------------------------------------------------------------


class ExtraBroker:
    """A second, throw-away Kafka broker started by ``start_extra``: its process, folder and log. ``stop()``
    ends it (SIGTERM to its process group, SIGKILL after ``timeout``); its folder is left for the caller."""

    def __init__(self, proc: subprocess.Popen, directory: Path, bootstrap: str) -> None:
        self.proc, self.directory, self.bootstrap = proc, directory, bootstrap
        self.log = directory / "kafka.log"

    def stop(self, timeout: float = 60) -> None:
        stop_group(self.proc, timeout)


def start_extra(directory: Path, port: int, cport: int, properties: dict[str, str], ready: Callable[[], bool],
                host: str = "127.0.0.1", timeout: float = 90) -> ExtraBroker:
    """Start one more single-node KRaft broker, beside the default one and sharing nothing with it but the jars:
    its configuration, cluster id, data and log live in ``directory`` (formatted afresh when empty), its
    listener on ``port`` and its controller on ``cport``. ``properties`` override ``server_properties`` (e.g.
    a SASL_SSL listener: ``listeners``, ``listener.security.protocol.map``, ``inter.broker.listener.name``,
    ``ssl.*``, ``listener.name.<name>.<mechanism>.sasl.jaas.config``). Ready when ``ready()`` returns true
    (a probe with the client settings the listener needs); a broker that exits or is not ready within
    ``timeout`` is stopped and raises ``InfraError`` with its log's tail. The caller stops it."""
    install(progress=lambda _line: None)
    for what, p in (("listener", port), ("controller", cport)):
        ensure_port_free(f"{NAME} extra broker {what}", host, p, "the extra broker's ports")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    props = {**server_properties(host, port, cport, data), **properties}
    server = directory / "server.properties"
    server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    log4j = directory / "log4j2.properties"
    log4j.write_text(_log4j_text())
    log = directory / "kafka.log"
    if not (data / "meta.properties").exists():
        while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
            pass
        result = subprocess.run([*_java(log4j), "kafka.tools.StorageTool", "format", "--standalone", "-t", cid,
                                 "-c", str(server)], capture_output=True, text=True, check=False)
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise InfraError(f"{NAME}: formatting the extra broker's storage in {directory} failed "
                             f"(exit {result.returncode}); see {log}")
    with open(log, "ab") as out:
        proc = subprocess.Popen([*_java(log4j), "kafka.Kafka", str(server)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    broker = ExtraBroker(proc, directory, f"{host}:{port}")
    try:
        wait_until(lambda: port_open(host, port) and ready(), timeout, f"{NAME}: extra broker start", log, proc)
    except BaseException:
        broker.stop()
        raise
    return broker
