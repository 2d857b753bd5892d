"""Apicurio Registry 3.x as one local Java process, serving the Confluent-compatible API.

Rules:
- Clients use ``HERALD_SCHEMA_REGISTRY_URL`` (default ``http://127.0.0.1:8081/apis/ccompat/v7``); the
  server listens on that URL's host and port. Its Quarkus management interface (health, metrics) gets a
  port found free at start (kept in ``registry/state.json``), never Quarkus' default 9000.
- The artifact is ``io.apicurio:apicurio-registry-app:<version>:all@tar.gz`` from Maven Central
  (``infra/registry/pom.xml``): the app's Quarkus fast-jar layout, run with ``java -jar quarkus-run.jar``.
  It is unpacked once into ``cache/apicurio-registry-<version>``.
- 3.3.x is compiled for Java 21 (class files 65; 3.0.x was for 17): a JDK >= 21 is looked for in
  ``HERALD_JAVA`` (a java binary), ``JAVA_HOME``, ``PATH`` and ``/usr/lib/jvm/*``, in that order.
- Storage: ``kafkasql`` (default) keeps every change in the Kafka topic ``herald.registry.journal`` on
  ``HERALD_KAFKA_BOOTSTRAP`` and replays it on start, so schemas and their ids survive restarts; the
  broker must be up first. ``mem`` keeps them in an in-process H2 database, lost on stop.
- Config (``registry/config/application.properties``), temp files and ``state.json`` live in
  ``registry/``; output goes to ``logs/registry.log``.
- "Up" means the management readiness check is UP *and* ``GET <url>/subjects`` answers 200. The REST API
  answers while a kafkasql journal is still being replayed, from a partial store, so a 200 alone is
  not readiness; the readiness check turns UP only once the replay is done.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from infra.common import (
    InfraError,
    ServiceStatus,
    ensure_port_free,
    log_path,
    maven_fetch,
    port_open,
    read_pid,
    start_process,
    stop_process,
    subdir,
    wait_until,
)

NAME = "registry"
POM = Path(__file__).resolve().parent / "registry" / "pom.xml"
VERSION = re.search(r"<apicurio\.version>([^<]+)</apicurio\.version>", POM.read_text()).group(1)  # type: ignore[union-attr]
MIN_JAVA = 17 if VERSION.startswith(("2.", "3.0.")) else 21
JVM_OPTS = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
STORAGES = ("kafkasql", "mem")
JOURNAL_TOPIC = "herald.registry.journal"
SNAPSHOTS_TOPIC = "herald.registry.snapshots"
EVENTS_TOPIC = "herald.registry.events"

# Apicurio's defaults are for a server; these fit one developer machine and Confluent clients.
BASE_CONFIG = {
    "quarkus.http.access-log.enabled": "false",     # one line per request would dwarf everything else
    "quarkus.log.console.format": "%d{yyyy-MM-dd HH:mm:ss,SSS} %-5p [%c{2.}] (%t) %s%e%n",
    "quarkus.log.category.\"io.apicurio\".level": "INFO",
    # ccompat: ids are content ids (one id per distinct schema, as in Confluent), not per-version global ids
    "apicurio.ccompat.legacy-id-mode.enabled": "false",
    "apicurio.ccompat.max-subjects": "10000",       # GET /subjects is cut at this many (default 1000)
    # the in-process H2 (the whole store for `mem`, the replayed view for `kafkasql`): small pools
    "apicurio.datasource.jdbc.initial-size": "2",
    "apicurio.datasource.jdbc.min-size": "2",
    "apicurio.datasource.jdbc.max-size": "16",
}


def url() -> str:
    """The Confluent-compatible base URL clients use (``HERALD_SCHEMA_REGISTRY_URL``), without a trailing slash."""
    return os.environ.get("HERALD_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7").rstrip("/")


def _host_port() -> tuple[str, int]:
    parts = urlsplit(url())
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or not parts.path.startswith("/apis/ccompat/"):
        raise InfraError(f"{NAME}: HERALD_SCHEMA_REGISTRY_URL={url()!r} must look like "
                         f"http://127.0.0.1:8081/apis/ccompat/v7 (plain http, host, port, ccompat path); fix the variable")
    return parts.hostname, port


def _kafka_bootstrap() -> str:
    return os.environ.get("HERALD_KAFKA_BOOTSTRAP", "127.0.0.1:9092").split(",")[0].strip()


def _app_dir() -> Path:
    return subdir("cache") / f"apicurio-registry-{VERSION}"


@lru_cache(maxsize=None)
def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """A java binary new enough for this Apicurio version, or InfraError naming what was found."""
    candidates: list[str] = []
    if os.environ.get("HERALD_JAVA"):
        candidates.append(os.environ["HERALD_JAVA"])
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(shutil.which("java"))  # type: ignore[arg-type]
    candidates += sorted((str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java")), reverse=True)
    seen: dict[str, int] = {}
    for java in candidates:
        real = os.path.realpath(java)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen[real] = _java_major(real)
        if seen[real] >= MIN_JAVA:
            return real
    found = ", ".join(f"{path} (Java {major})" for path, major in seen.items()) or "no java at all"
    raise InfraError(f"{NAME}: Apicurio Registry {VERSION} needs Java {MIN_JAVA}+ and found {found}; "
                     f"install a JDK {MIN_JAVA}+ and point HERALD_JAVA (a java binary) or JAVA_HOME at it")


def _cds_opts(java: str) -> list[str]:
    """A class-data archive written at the first clean exit and reused after (Java 19+): ~1-2 s off each start.

    The JVM checks the archive against itself and the class path and quietly rewrites a stale one.
    """
    if _java_major(java) < 19:
        return []
    return ["-XX:+AutoCreateSharedArchive", f"-XX:SharedArchiveFile={subdir(NAME) / f'classes-{VERSION}.jsa'}"]


def install(progress: Callable[[str], None] = print) -> Path:
    """Fetch the registry's distribution from Maven Central and unpack it, once. Returns the app folder."""
    app = _app_dir()
    if (app / "quarkus-run.jar").exists() and (app / ".complete").exists():
        return app
    if shutil.which("mvn") is None:
        raise InfraError(f"{NAME}: `mvn` is not on PATH, so Apicurio Registry cannot be fetched; "
                         f"install Maven (apt-get install maven)")
    download = subdir("cache", f"registry-download-{VERSION}")
    maven_fetch(NAME, POM, download, progress)
    archives = sorted(download.glob(f"apicurio-registry-app-{VERSION}-all.tar.gz"))
    if not archives:
        raise InfraError(f"{NAME}: Maven finished but {download} has no apicurio-registry-app-{VERSION}-all.tar.gz; "
                         f"delete {download} and retry")
    progress(f"{NAME}: unpacking {archives[0].name} into {app}")
    partial = app.with_name(app.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(partial, filter="data")
            else:  # Python < 3.11.4
                tar.extractall(partial)  # noqa: S202 - Maven Central artifact, checksum verified by Maven
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise InfraError(f"{NAME}: unpacking {archives[0]} failed ({exc}); delete {download} and retry") from None
    if not (partial / "quarkus-run.jar").exists():
        raise InfraError(f"{NAME}: {archives[0].name} has no quarkus-run.jar; the artifact layout changed, "
                         f"see infra/registry/pom.xml")
    shutil.rmtree(app, ignore_errors=True)
    partial.rename(app)
    (app / ".complete").write_text(VERSION)
    return app


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _config(storage: str, host: str, port: int, management_port: int) -> dict[str, str]:
    work = subdir(NAME, "tmp")
    config = {**BASE_CONFIG,
              "quarkus.http.host": host, "quarkus.http.port": str(port),
              # health and metrics: a free port picked at start (not Quarkus' default 9000), kept in state.json
              "quarkus.management.host": host, "quarkus.management.port": str(management_port),
              "apicurio.storage.snapshot.location": str(work), "apicurio.import.work-dir": str(work)}
    if storage == "mem":
        config |= {"apicurio.storage.kind": "sql", "apicurio.storage.sql.kind": "h2"}
    else:
        config |= {"apicurio.storage.kind": "kafkasql",
                   "apicurio.kafkasql.bootstrap.servers": _kafka_bootstrap(),
                   "apicurio.kafkasql.topic": JOURNAL_TOPIC,
                   "apicurio.kafkasql.snapshots.topic": SNAPSHOTS_TOPIC,
                   "apicurio.events.kafka.topic": EVENTS_TOPIC,
                   # created by the registry itself (retention -1, which it insists on); one partition is
                   # plenty for a journal this small and makes the replay at start quicker
                   "apicurio.kafkasql.topic.auto-create": "true",
                   "apicurio.kafkasql.topic.partitions": "1",
                   "apicurio.kafkasql.snapshots.topic.partitions": "1",
                   # each start-up consumer waits one empty poll on an idle journal: 5 s each by default
                   "apicurio.kafkasql.consumer.poll.timeout": "500",
                   "apicurio.kafkasql.consumer.group-prefix": "herald-registry-"}
    return config


def _write_config(config: dict[str, str]) -> Path:
    """Quarkus reads ``config/application.properties`` from its working directory, over the built-in one."""
    path = subdir(NAME, "config") / "application.properties"
    path.write_text("# written by infra/registry.py on every start; edit the code, not this file\n"
                    + "".join(f"{key}={value}\n" for key, value in config.items()))
    return path


def _get(path: str, timeout: float = 2.0):
    """GET a path under the ccompat URL (or, if it starts with ``/apis``, under the server root); JSON back.

    A secured registry is asked as Herald's registry client asks it (``schemas.rest.rest_config``
    checks the settings): basic auth from ``HERALD_SCHEMA_REGISTRY_USERNAME``/``PASSWORD`` or from the
    URL's ``user:password@`` (never both), and for ``https://`` the CA in ``HERALD_SCHEMA_REGISTRY_CAFILE``
    (else the system's CAs). A setting that cannot work raises ValueError naming it; an error answer or
    none raises OSError."""
    from schemas.rest import RegistryHTTPError, RegistryRest, rest_config

    config = rest_config(url(), timeout, 0, username=os.environ.get("HERALD_SCHEMA_REGISTRY_USERNAME", ""),
                         password=os.environ.get("HERALD_SCHEMA_REGISTRY_PASSWORD", ""),
                         cafile=os.environ.get("HERALD_SCHEMA_REGISTRY_CAFILE", ""))
    if path.startswith("/apis"):
        split = urlsplit(config.base_urls[0])
        config = dataclasses.replace(config, base_urls=(f"{split.scheme}://{split.netloc}",))
    try:
        return RegistryRest(config).request("GET", path)
    except RegistryHTTPError as exc:
        raise OSError(f"the registry answered {exc}") from None


def _storage_ready(management_port: int | None) -> bool:
    """The management interface's readiness: with kafkasql it turns UP only once the journal is replayed.

    The REST API answers before that, from a half-replayed store (seen: 19 of 303 subjects at the first 200),
    so ``/subjects`` alone is no proof of readiness. ``None`` (a registry we did not start): nothing to ask.
    """
    if not management_port:
        return True
    host, _ = _host_port()
    with urllib.request.urlopen(f"http://{host}:{management_port}/health/ready", timeout=2.0) as response:  # noqa: S310
        return json.loads(response.read()).get("status") == "UP"


def _ready(management_port: int | None) -> bool:
    return _storage_ready(management_port) and isinstance(_get("/subjects"), list)


def _state_path() -> Path:
    return subdir(NAME) / "state.json"


def _state() -> dict:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return {}


def status() -> ServiceStatus:
    """Up when ours is ready (see ``start``) or, for one we did not start, ``/subjects`` answers 200.

    ``version`` comes from the core API's system info; ``detail`` has the subject count, storage and pid.
    """
    pid = read_pid(NAME)
    state = _state() if pid is not None else {}
    detail: dict = {"managed": pid is not None, "pid": pid, "log": str(log_path(NAME))}
    if state:
        detail["storage"] = state.get("storage")
    version = ""
    try:
        subjects = _get("/subjects")
        up = isinstance(subjects, list) and _storage_ready(state.get("management_port"))
        detail["subjects"] = len(subjects) if up else None
    except (OSError, ValueError):
        up = False
    if up:
        try:
            info = _get("/apis/registry/v3/system/info")
            version = str(info.get("version", ""))
            detail["server"] = info.get("name", "")
        except (OSError, ValueError, AttributeError):
            version = "unknown (core API did not answer)"
    from schemas.rest import safe_url

    return ServiceStatus(NAME, up, safe_url(url()), version, detail)  # never a password from the URL


def start(progress: Callable[[str], None] = print, timeout: float = 120, storage: str = "kafkasql") -> ServiceStatus:
    """Make the registry answer on ``HERALD_SCHEMA_REGISTRY_URL`` with the given storage (``kafkasql`` or ``mem``).

    Idempotent: a registry of ours already running with the same storage is awaited and reused (a different
    storage is an error: stop it first). Ready means the management readiness check is UP (for kafkasql: the
    journal is replayed) and ``GET /subjects`` answers 200. ``detail["startup_s"]`` is the seconds from
    launching the JVM to ready (0 when nothing was launched). A start that fails stops the process again.
    """
    if storage not in STORAGES:
        raise InfraError(f"{NAME}: unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    host, port = _host_port()
    pid, startup_s = read_pid(NAME), 0.0
    if pid is not None:
        running = _state().get("storage")
        if running != storage:
            raise InfraError(f"{NAME}: already running (pid {pid}) with storage {running!r}, not {storage!r}; "
                             f"stop it first (infra.registry.stop())")
        management_port = _state().get("management_port")
        wait_until(lambda: _ready(management_port), timeout, f"{NAME}: registry (pid {pid}) start", log_path(NAME))
    elif port_open(host, port) and status().up:  # a registry not started here already answers: use it
        progress(f"{NAME}: a schema registry already answers on {url()}; using it")
        return status()
    else:
        ensure_port_free(NAME, host, port, "HERALD_SCHEMA_REGISTRY_URL")
        java = find_java()
        if storage == "kafkasql":
            khost, _, kport = _kafka_bootstrap().rpartition(":")
            if not (kport.isdigit() and port_open(khost or "127.0.0.1", int(kport))):
                raise InfraError(f"{NAME}: kafkasql storage needs Kafka at {_kafka_bootstrap()} and nothing answers "
                                 f"there; start Kafka first (infra.kafka.start()) or use storage='mem'")
        app = install(progress)
        management_port = _free_port(host)
        _write_config(_config(storage, host, port, management_port))
        argv = [java, *JVM_OPTS, *_cds_opts(java), *os.environ.get("HERALD_REGISTRY_JAVA_OPTS", "").split(),
                f"-Djava.io.tmpdir={subdir(NAME, 'tmp')}", "-jar", str(app / "quarkus-run.jar")]
        progress(f"{NAME}: starting Apicurio Registry {VERSION} ({storage}) on {url()} (log: {log_path(NAME)})")
        t0 = time.monotonic()
        proc = start_process(NAME, argv, cwd=subdir(NAME))
        _state_path().write_text(json.dumps({"storage": storage, "pid": proc.pid, "version": VERSION, "java": java,
                                             "url": url(), "management_port": management_port}))
        try:
            wait_until(lambda: _ready(management_port), timeout, f"{NAME}: Apicurio Registry start",
                       log_path(NAME), proc)
        except InfraError:
            stop_process(NAME)
            raise
        startup_s = round(time.monotonic() - t0, 2)
    result = status()
    result.detail["startup_s"] = startup_s
    return result


def stop() -> bool:
    """Stop the registry we started. True if something was stopped. Kafka (for kafkasql) keeps the schemas."""
    stopped = stop_process(NAME, timeout=30)
    _state_path().unlink(missing_ok=True)
    return stopped


if __name__ == "__main__":
    import sys

    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    try:
        if command == "start":
            print(start(storage=sys.argv[2] if len(sys.argv) > 2 else "kafkasql"))
        elif command == "stop":
            print("stopped" if stop() else "not running")
        elif command == "install":
            print(install())
        else:
            print(status())
    except InfraError as exc:
        raise SystemExit(str(exc)) from None
