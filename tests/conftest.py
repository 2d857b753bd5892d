"""Session fixtures: the real broker, registry and database, started once; per-test isolation by names.

Where the servers come from, in order:
1. ``HERALD_KAFKA_BOOTSTRAP``, ``HERALD_SCHEMA_REGISTRY_URL`` and ``HERALD_DATABASE_URL`` all set and answering:
   they are used as they are (a running ``herald up``, or a CI service).
2. A Docker engine answers: testcontainers starts Kafka, Apicurio Registry and PostgreSQL.
3. Otherwise the project's own scripts (``infra/``) start them as local processes on test ports, with their
   state under ``.herald/test``; ``HERALD_TEST_KEEP=1`` leaves them running for the next session.
"""
from __future__ import annotations

import os
import uuid

import pytest

from infra.common import REPO_ROOT, port_open

TEST_ENV = {
    "HERALD_HOME": str(REPO_ROOT / ".herald" / "test"),
    "HERALD_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
    "HERALD_KAFKA_CONTROLLER_PORT": "29093",
    "HERALD_SCHEMA_REGISTRY_URL": "http://127.0.0.1:28081/apis/ccompat/v7",
    "HERALD_DATABASE_URL": "postgresql://herald:herald@127.0.0.1:25432/herald",
}
EXTERNAL = ("HERALD_KAFKA_BOOTSTRAP", "HERALD_SCHEMA_REGISTRY_URL", "HERALD_DATABASE_URL")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no Docker"
        return False


def _start_with_testcontainers():
    from testcontainers.core.container import DockerContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft().start()
    pg = PostgresContainer("postgres:15", username="herald", password="herald", dbname="herald").start()
    registry = DockerContainer("apicurio/apicurio-registry:3.1.7").with_exposed_ports(8080).start()
    os.environ["HERALD_KAFKA_BOOTSTRAP"] = kafka.get_bootstrap_server()
    os.environ["HERALD_DATABASE_URL"] = pg.get_connection_url(driver=None)
    os.environ["HERALD_SCHEMA_REGISTRY_URL"] = (
        f"http://{registry.get_container_host_ip()}:{registry.get_exposed_port(8080)}/apis/ccompat/v7")
    from infra import postgres

    postgres.migrate()
    return [kafka, pg, registry]


@pytest.fixture(scope="session")
def stack():
    """The servers' addresses in the environment, ready; yields a short description of where they came from."""
    if all(os.environ.get(v) for v in EXTERNAL):
        yield "external"
        return
    if _docker_answers():
        containers = _start_with_testcontainers()
        yield "testcontainers"
        for c in containers:
            c.stop()
        return
    os.environ.update({k: v for k, v in TEST_ENV.items() if not os.environ.get(k)})
    from infra import kafka, postgres, registry

    started = []
    try:
        for module in (postgres, kafka, registry):
            running = module.status().up  # another session's (or `herald up`'s): used, never stopped here
            status = module.start(progress=lambda line: print(line, flush=True))
            if not running and status.detail.get("managed") is not False:
                started.append(module)
        yield "local processes"
    finally:
        if os.environ.get("HERALD_TEST_KEEP") != "1":
            for module in reversed(started):
                module.stop()


@pytest.fixture
async def pool(stack):
    """An asyncpg pool on the test session's PostgreSQL, migrated."""
    import asyncpg

    from infra import postgres

    await postgres.migrate_async()
    pool = await asyncpg.create_pool(postgres.database_url(), min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
def unique() -> str:
    """A short unique name for this test's topics, consumer groups and users."""
    return f"t{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["free_port", "port_open"]
