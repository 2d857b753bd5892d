"""PostgreSQL for Herald: one local cluster, the role and database of ``HERALD_DATABASE_URL``, the migrations.

Rules:

- The server comes from the distribution (``apt-get install -y postgresql``). The newest installed
  ``/usr/lib/postgresql/<major>/bin`` creates the cluster; an existing cluster runs with its own major.
- The cluster lives in ``<HERALD_HOME>/postgres/data``, is created once and belongs to the ``postgres`` OS user,
  because the server refuses to run as root. It listens on 127.0.0.1 only, at the URL's port. Its unix socket is
  in ``<HERALD_HOME>/postgres/socket`` (mode 0700), where root connects as ``postgres`` without a password to
  create the URL's role and database.
- If the URL's port already answers and accepts the URL's credentials (say, a developer's own server), that
  server is used as it is and only migrated; ``stop`` never touches it.
- Migrations are ``infra/migrations/*.sql``, applied in filename order, each in one transaction, and recorded
  by file stem in ``schema_migrations``. So a migration must be able to run inside a transaction.
"""
from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import asyncpg

from infra.common import InfraError, ServiceStatus, _tail, ensure_port_free, home, log_path, port_open, subdir, wait_until

NAME = "postgres"
ENV_VAR = "HERALD_DATABASE_URL"
DEFAULT_URL = "postgresql://herald:herald@127.0.0.1:5432/herald"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
NOT_INSTALLED = "PostgreSQL server not installed: run `apt-get install -y postgresql`"
OS_USER = "postgres"
PG_LIB = Path("/usr/lib/postgresql")  # Debian's layout: <major>/bin
FALLBACK_ROOT = Path("/var/tmp/herald-postgres")
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
# A small box, but crash-safe: the sinks commit their Kafka offsets after a database commit, so that commit
# must be durable (synchronous_commit off could lose it on a crash, and with it a notification).
SETTINGS = {"max_connections": "200", "shared_buffers": "'128MB'", "fsync": "on", "synchronous_commit": "on"}


@dataclass(frozen=True)
class Url:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def database_url() -> str:
    return os.environ.get(ENV_VAR, DEFAULT_URL)


def parse_url(url: str) -> Url:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.username or not parts.path.strip("/"):
        # the URL holds a password, so it is not echoed
        raise InfraError(f"postgres: {ENV_VAR} is not of the form postgresql://user:password@host:port/database")
    return Url(parts.hostname or "127.0.0.1", parts.port or 5432, unquote(parts.username),
               unquote(parts.password or ""), unquote(parts.path.strip("/")))


@functools.lru_cache(maxsize=8)
def _base(home_dir: Path) -> Path:
    """``<HERALD_HOME>/postgres``, or, when the server's OS user cannot reach that (a checkout under /root, say),
    a folder of its own under ``/var/tmp/herald-postgres`` named for the home folder, so a fresh clone anywhere
    just works."""
    base = subdir(NAME)
    if os.geteuid() == 0 and not _pg_can_enter(base):
        digest = hashlib.sha1(str(home_dir).encode()).hexdigest()[:10]
        base = FALLBACK_ROOT / digest
        base.mkdir(parents=True, exist_ok=True)
        FALLBACK_ROOT.chmod(0o755)
        (subdir(NAME) / "WHERE").write_text(f"the cluster lives in {base}: the postgres user cannot enter {home_dir}\n")
    return base


def _log() -> Path:
    """The server's log: ``logs/postgres.log``, or inside the fallback folder where the server can write it."""
    base = _base(home())
    return log_path(NAME) if base == subdir(NAME) else base / "postgres.log"


def _dirs() -> tuple[Path, Path, Path]:
    """The service folder, the cluster's data directory and the socket directory."""
    base = _base(home())
    return base, base / "data", base / "socket"


def _version_key(major: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", major))


def _bin_dir(major: str | None = None) -> Path:
    """The server binaries of ``major``, or of the newest installed major when None."""
    found = {d.parent.name: d for d in PG_LIB.glob("*/bin")
             if (d / "postgres").exists() and (d / "initdb").exists()}  # postgresql-client alone has bin/psql only
    if major is None:
        if not found:
            raise InfraError(NOT_INSTALLED)
        return found[max(found, key=_version_key)]
    if major not in found:
        raise InfraError(f"postgres: {_dirs()[1]} was created by PostgreSQL {major}, which is not installed; "
                         f"run `apt-get install -y postgresql-{major}` or delete that folder to start afresh")
    return found[major]


def _cluster_bin() -> Path:
    """The binaries for the existing cluster's major, else the newest."""
    version = _dirs()[1] / "PG_VERSION"
    return _bin_dir(version.read_text().strip() if version.exists() else None)


def _as_pg(argv: list[str]) -> list[str]:
    # runuser needs neither a password nor a tty, unlike su and sudo
    return ["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str, log: Path | None = None) -> None:
    # cwd: the server's user may not be able to enter ours (e.g. /root), which initdb and pg_ctl complain about
    result = subprocess.run(_as_pg(argv), capture_output=True, text=True, cwd=_dirs()[0])
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-600:]
        raise InfraError(f"postgres: {what} failed (exit {result.returncode}): {output}{_tail(log)}")


def _pg_can_enter(path: Path) -> bool:
    return subprocess.run(_as_pg(["test", "-x", str(path)]), cwd="/").returncode == 0


def install(progress: Callable[[str], None] = print) -> Path:
    """Nothing is downloaded: check that the server binaries and their OS user exist, return the bin folder."""
    bin_dir = _bin_dir()
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:  # the Debian package creates it
        raise InfraError(NOT_INSTALLED) from None
    return bin_dir


def _prepare(url: Url) -> None:
    """Hand the service folder to the server's OS user; fail clearly if that user cannot reach it."""
    base, data, sock = _dirs()
    log = _log()
    log.touch()
    sock.mkdir(exist_ok=True)
    sock.chmod(0o700)  # local connections are trusted, so only postgres and root may reach the socket
    if len(str(sock / f".s.PGSQL.{url.port}")) > SOCKET_PATH_MAX:
        raise InfraError(f"postgres: the socket path {sock}/.s.PGSQL.{url.port} is longer than the "
                         f"{SOCKET_PATH_MAX} bytes a unix socket allows; set HERALD_HOME to a shorter folder")
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(OS_USER)
    for path in (base, sock, log):
        os.chown(path, user.pw_uid, user.pw_gid)
    base.chmod(0o700)
    if not _pg_can_enter(base):
        blocker = next(p for p in [*reversed(base.parents), base] if not _pg_can_enter(p))
        raise InfraError(f"postgres: the `{OS_USER}` OS user cannot enter {blocker}, so the server cannot reach "
                         f"{data}; run `chmod o+x {blocker}` or set HERALD_HOME to a folder it can reach")


def _initdb(progress: Callable[[str], None]) -> float | None:
    """Create the cluster unless it exists; the seconds it took, or None."""
    base, data, _ = _dirs()
    if (data / "PG_VERSION").exists():
        return None
    if data.exists() and any(data.iterdir()):
        raise InfraError(f"postgres: {data} is not empty but holds no cluster; delete it to start afresh")
    bin_dir = _bin_dir()
    progress(f"postgres: creating a PostgreSQL {bin_dir.parent.name} cluster in {data} (first run only)…")
    began = time.monotonic()
    # initdb into a side folder, then rename: an interrupted run never leaves a half cluster in data/
    fresh = base / "data.init"
    shutil.rmtree(fresh, ignore_errors=True)
    _run([str(bin_dir / "initdb"), "-D", str(fresh), "-U", "postgres", "-E", "UTF8", "--locale=C",
          "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb")
    with open(fresh / "postgresql.conf", "a") as conf:
        conf.write("\ninclude = 'herald.conf'\t# rewritten by infra/postgres.py on every start\n")
    if data.exists():
        data.rmdir()
    fresh.rename(data)
    return time.monotonic() - began


def _write_settings(url: Url) -> None:
    """Rewritten on every start, so a new port in the URL or new SETTINGS take effect."""
    _, data, sock = _dirs()
    quoted = str(sock).replace("'", "''")
    lines = {"listen_addresses": "'127.0.0.1'", "port": str(url.port), "unix_socket_directories": f"'{quoted}'",
             "unix_socket_permissions": "0700", **SETTINGS}
    conf = data / "herald.conf"
    conf.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(conf, user.pw_uid, user.pw_gid)


def _postmaster() -> tuple[int, str] | None:
    """The port and process state (R, S, Z…) of the postmaster named in our postmaster.pid, if it still exists."""
    try:
        lines = (_dirs()[1] / "postmaster.pid").read_text().splitlines()
        stat = Path(f"/proc/{int(lines[0])}/stat").read_text()
        if not stat.startswith(f"{lines[0]} (postgres) "):  # the pid was reused
            return None
        return int(lines[3]), stat.split(") ", 1)[1][0]
    except (OSError, ValueError, IndexError):
        return None


def _running_port() -> int | None:
    """The port our cluster listens on; None when it is not running."""
    found = _postmaster()
    return found[0] if found and found[1] != "Z" else None


async def _connect(url: Url, admin: bool = False, timeout: float = 5) -> asyncpg.Connection:
    if admin:  # over our socket, as the superuser: trusted, see _prepare
        return await asyncpg.connect(host=str(_dirs()[2]), port=url.port, user="postgres", database="postgres",
                                     timeout=timeout)
    return await asyncpg.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                                 database=url.database, timeout=timeout)


async def _ping(url: Url, admin: bool = False, timeout: float = 5) -> bool:
    conn = await _connect(url, admin, timeout)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


async def _ensure_role_and_database(url: Url) -> None:
    """Create the URL's role and database if missing; the role's password follows the URL."""
    conn = await _connect(url, admin=True)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", url.user)
        # DDL takes no parameters: let the server quote the name and the password
        ddl = f"{'ALTER' if exists else 'CREATE'} ROLE %I LOGIN PASSWORD %L"
        await conn.execute(await conn.fetchval("SELECT format($1, $2::text, $3::text)", ddl, url.user, url.password))
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
            await conn.execute(await conn.fetchval("SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                                                   url.database, url.user))
    finally:
        await conn.close()


async def migrate_async(dsn: str | None = None) -> list[str]:
    """Apply the migrations not yet in ``schema_migrations``, in filename order, each in its own transaction.

    Returns the versions (file stems) applied now. A failed migration is rolled back and stops the run."""
    conn = await asyncpg.connect(dsn or database_url(), timeout=10)
    try:
        # parallel migrators (test workers, two `herald up`s) queue here instead of racing on one version;
        # closing the connection releases the lock
        await conn.execute("SELECT pg_advisory_lock(hashtext('herald.schema_migrations'))")
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                           "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for path in sorted(MIGRATIONS.glob("*.sql"), key=lambda p: p.name):
            if path.stem in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL synchronous_commit = on")  # the server's default is off
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
            except asyncpg.PostgresError as error:
                raise InfraError(f"postgres: migration {path.name} failed and was rolled back: {error}") from error
            applied.append(path.stem)
        return applied
    finally:
        await conn.close()


def migrate(dsn: str | None = None) -> list[str]:
    """Synchronous :func:`migrate_async`; not callable from inside a running event loop."""
    return asyncio.run(migrate_async(dsn))


@contextmanager
def _locked() -> Iterator[None]:
    # two `herald up`s (or test workers) at once must not both run initdb or pg_ctl start
    with open(subdir(NAME) / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def start(progress: Callable[[str], None] = print, timeout: float = 60) -> ServiceStatus:
    """Make the URL's database answer and be migrated; idempotent. See the module docstring for the rules."""
    began = time.monotonic()
    url = parse_url(database_url())
    install(progress)
    detail: dict[str, object] = {}
    managed = True
    with _locked():
        _prepare(url)
        running = _running_port()
        if running is not None and running != url.port:
            progress(f"postgres: restarting the cluster, which listens on {running}, on {url.port}…")
            stop()
            running = None
        if running is None and port_open(url.host, url.port):
            try:
                # a PostgreSQL server answers in milliseconds; other servers (HTTP) wait for more input
                asyncio.run(_ping(url, timeout=2))
            except asyncpg.PostgresError as error:  # PostgreSQL, but not letting us in
                raise InfraError(
                    f"postgres: the PostgreSQL server already on {url.address} refuses {ENV_VAR}'s role or database "
                    f"({error}); create them there, stop that server (a distribution's cluster: "
                    f"`pg_lsclusters`, then `pg_ctlcluster <version> main stop`) or point {ENV_VAR} at a free port"
                ) from None
            except Exception:  # noqa: BLE001 - whatever it is, it is not a PostgreSQL server
                ensure_port_free(NAME, url.host, url.port, ENV_VAR)
            else:
                progress(f"postgres: using the server already on {url.address}")
                managed = False
        if managed:
            if url.host not in ("127.0.0.1", "localhost"):
                raise InfraError(f"postgres: {ENV_VAR} points at {url.address}, which does not answer; "
                                 f"only a server on 127.0.0.1 can be started here")
            if running is None:
                # a killed postmaster is a zombie until reaped, and the new one refuses its lock file until then
                wait_until(lambda: _postmaster() is None, timeout, "postgres: the old server's exit")
                initdb_s = _initdb(progress)
                if initdb_s is not None:
                    detail["initdb_s"] = round(initdb_s, 2)
                _write_settings(url)
                bin_dir = _cluster_bin()
                log = _log()
                progress(f"postgres: starting PostgreSQL {bin_dir.parent.name} on 127.0.0.1:{url.port}…")
                _run([str(bin_dir / "pg_ctl"), "start", "-D", str(_dirs()[1]), "-l", str(log), "-s",
                      "-w", "-t", str(int(timeout))], "pg_ctl start", log)
                wait_until(lambda: asyncio.run(_ping(url, admin=True)), timeout, "postgres", log)
            asyncio.run(_ensure_role_and_database(url))
        detail["applied"] = applied = migrate(database_url())
    if applied:
        progress(f"postgres: applied migrations {', '.join(applied)}")
    result = status()
    result.detail.update(detail, startup_s=round(time.monotonic() - began, 2))
    return result


def stop(timeout: float = 60) -> bool:
    """Stop our own cluster with a fast shutdown (open transactions roll back, then a checkpoint).

    True if it was running. A server we did not start is left alone."""
    if _running_port() is None:
        return False
    _run([str(_cluster_bin() / "pg_ctl"), "stop", "-D", str(_dirs()[1]), "-m", "fast", "-s", "-w",
          "-t", str(int(timeout))], "pg_ctl stop", _log())
    return True


async def _inspect(url: Url) -> tuple[str, list[str]]:
    conn = await _connect(url)
    try:
        version = (await conn.fetchval("SHOW server_version")).split()[0]
        has_table = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version") if has_table else []
        return version, [row["version"] for row in rows]
    finally:
        await conn.close()


def status() -> ServiceStatus:
    """Up means the URL's database accepts the URL's credentials; then the version and applied migrations."""
    url = parse_url(database_url())
    managed = _running_port() == url.port  # else the server on that port, if any, is not ours
    result = ServiceStatus(NAME, False, url.address, detail={"managed": managed, "data_dir": str(_dirs()[1])})
    try:
        result.version, result.detail["migrations"] = asyncio.run(_inspect(url))
        result.up = True
    except Exception as error:  # noqa: BLE001 - down, for whatever reason; say which
        result.detail["error"] = f"{type(error).__name__}: {error}".strip(": ").splitlines()[0]
    return result
