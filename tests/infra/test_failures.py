"""The local stack's failure messages: one line that says what failed and what to do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from infra import kafka, postgres, registry
from infra.common import REPO_ROOT, InfraError
from tests.conftest import free_port


@pytest.fixture
def squatter():
    """A process-local TCP listener that accepts connections and says nothing: a port taken by someone else."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HERALD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_kafka_on_a_taken_port_says_so(private_home, squatter, monkeypatch):
    monkeypatch.setenv("HERALD_KAFKA_BOOTSTRAP", f"127.0.0.1:{squatter}")
    monkeypatch.setenv("HERALD_KAFKA_CONTROLLER_PORT", str(free_port()))
    with pytest.raises(InfraError) as info:
        kafka.start(progress=lambda _: None)
    message = str(info.value)
    assert f"port 127.0.0.1:{squatter} is already taken" in message and "HERALD_KAFKA_BOOTSTRAP" in message
    assert "\n" not in message


def test_registry_on_a_taken_port_says_so(private_home, squatter, monkeypatch):
    monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_URL", f"http://127.0.0.1:{squatter}/apis/ccompat/v7")
    with pytest.raises(InfraError) as info:
        registry.start(progress=lambda _: None)
    assert f"{squatter}" in str(info.value) and "HERALD_SCHEMA_REGISTRY_URL" in str(info.value)


def test_postgres_on_a_taken_port_says_so(private_home, squatter, monkeypatch):
    monkeypatch.setenv("HERALD_DATABASE_URL", f"postgresql://herald:herald@127.0.0.1:{squatter}/herald")
    with pytest.raises(InfraError) as info:
        postgres.start(progress=lambda _: None)
    assert f"{squatter}" in str(info.value) and "HERALD_DATABASE_URL" in str(info.value)


def test_a_stopped_broker_is_reported_as_down_and_tools_say_what_to_do(private_home, monkeypatch):
    port = free_port()  # nothing listens here: a stopped broker
    monkeypatch.setenv("HERALD_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    assert kafka.status().up is False
    result = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "herald.events"], cwd=REPO_ROOT,
                            env={**os.environ}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"Kafka at 127.0.0.1:{port} is not answering" in result.stderr and "herald up" in result.stderr
    assert "Traceback" not in result.stderr
