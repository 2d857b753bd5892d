"""The pipeline end to end over SASL_SSL: a broker of the test's own with a self-signed CA and SASL/PLAIN.

The test makes a CA and a broker certificate (for 127.0.0.1 and localhost), starts a second Kafka broker
(``infra.kafka.start_extra``) whose only client listener is SASL_SSL, and runs a worker and the in-app sink
against it with ``HERALD_KAFKA_SECURITY_PROTOCOL=SASL_SSL``: events produced over TLS with a password are
decided and delivered into PostgreSQL, exactly once each. A client with the wrong password is refused
with an authentication error. The shared registry and database are used as they are; the extra broker is
stopped at the end.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from herald.kafka import client_config, connection_problem
from herald.settings import Settings
from herald.topics import cluster_replication, replication_warnings, topic_configs, weak_topics
from infra import kafka as infra_kafka
from infra.common import REPO_ROOT
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import make_event, wait_for_rows

pytestmark = pytest.mark.integration

USER, PASSWORD = "herald", "herald-secret"


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A self-signed CA (``ca.pem``) and a broker key and certificate it signed, for 127.0.0.1 and localhost, in
    one PEM file (``broker.pem``: the key, then the certificate) as Kafka's PEM keystore reads it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Herald test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, broker_file = directory / "ca.pem", directory / "broker.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    broker_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
                            + cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return ca_file, broker_file


def sasl_ssl_properties(host: str, port: int, cport: int, ca_file: Path, broker_file: Path) -> dict[str, str]:
    """A broker whose one client listener (also the inter-broker one) is SASL_SSL with SASL/PLAIN; the
    controller stays PLAINTEXT on its own port."""
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{USER}" password="{PASSWORD}" user_{USER}="{PASSWORD}";')
    return {
        "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{cport}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(broker_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_file),
        "ssl.client.auth": "none",
    }


def secured(settings: Settings, bootstrap: str, ca_file: Path, password: str = PASSWORD) -> Settings:
    return dataclasses.replace(settings, kafka_bootstrap=bootstrap, kafka_security_protocol="SASL_SSL",
                               kafka_sasl_mechanism="PLAIN", kafka_sasl_username=USER, kafka_sasl_password=password,
                               kafka_ssl_cafile=str(ca_file))


def security_env(bootstrap: str, ca_file: Path, password: str = PASSWORD) -> dict[str, str]:
    return {"HERALD_KAFKA_BOOTSTRAP": bootstrap, "HERALD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "HERALD_KAFKA_SASL_MECHANISM": "PLAIN", "HERALD_KAFKA_SASL_USERNAME": USER,
            "HERALD_KAFKA_SASL_PASSWORD": password, "HERALD_KAFKA_SSL_CAFILE": str(ca_file)}


def answers(settings: Settings, timeout: float = 5.0) -> bool:
    AdminClient({**client_config(settings), "log_level": 0, "error_cb": lambda _e: None}).list_topics(timeout=timeout)
    return True


@pytest.fixture(scope="module")
def broker(stack, tmp_path_factory):
    """The SASL_SSL broker: ``(bootstrap, ca_file)``; stopped after the module."""
    directory = tmp_path_factory.mktemp("sasl-ssl-broker")
    ca_file, broker_file = make_certificates(directory)
    port, cport = free_port(), free_port()
    probe = secured(Settings(), f"127.0.0.1:{port}", ca_file)
    extra = infra_kafka.start_extra(directory / "kafka", port, cport,
                                    sasl_ssl_properties("127.0.0.1", port, cport, ca_file, broker_file),
                                    ready=lambda: answers(probe, 3.0), timeout=120)
    try:
        yield extra.bootstrap, ca_file
    finally:
        extra.stop()
        assert extra.proc.poll() is not None


def test_the_pipeline_delivers_over_sasl_ssl(broker, tmp_path):
    bootstrap, ca_file = broker
    unique = f"sasl{uuid.uuid4().hex[:8]}"
    p = Pipeline(unique, tmp_path, free_port())
    p.settings = secured(p.settings, bootstrap, ca_file)
    p.env.update(security_env(bootstrap, ca_file))
    p.prepare()
    try:
        p.start("worker", timeout=120)
        p.start("sink", timeout=120)
        from herald.kafka import make_producer, produce
        from schemas.codec import Codec
        from schemas.registry import Registry

        settings = p.settings
        topic = settings.topic("events")
        codec = Codec(Registry.from_settings(settings))
        producer = make_producer(settings)
        users = [f"{unique}-u{i}" for i in range(5)]
        events = [make_event(users[n % len(users)], n) for n in range(40)]
        for e in events:
            produce(producer, topic, codec.encode(f"{topic}-value", "NotificationEvent", e), e["user_id"].encode())
        assert producer.flush(30) == 0

        rows = wait_for_rows(settings.database_url, users, len(events), timeout=120)
        assert sorted(r["event_ids"][0] for r in rows) == sorted(e["event_id"] for e in events)
        for name in ("worker", "sink"):
            assert PASSWORD not in p.log(name).read_text(errors="replace"), f"the {name} logged the SASL password"
        # the records really went through the SASL_SSL broker: its topics hold them, the shared broker has none
        meta = AdminClient(client_config(settings)).list_topics(topic, timeout=10)
        assert len(meta.topics[topic].partitions) == settings.partitions
        shared = AdminClient({"bootstrap.servers": Settings.from_env().kafka_bootstrap}).list_topics(timeout=10)
        assert topic not in shared.topics
        # what herald status reads: one broker, every Herald topic with 1 replica and min.insync.replicas 1
        brokers, replication = cluster_replication(settings)
        assert brokers == 1 and set(replication) == set(topic_configs(settings))
        assert set(replication.values()) == {(1, 1)}
        assert replication_warnings(settings) == []  # one broker: nothing better is possible
        assert len(weak_topics(3, replication)) == len(replication)  # on three brokers each would be flagged
    finally:
        p.stop()


def test_a_wrong_password_is_refused_with_an_authentication_error(broker):
    bootstrap, ca_file = broker
    wrong = secured(Settings(), bootstrap, ca_file, password="not-the-password")
    errors: list = []
    admin = AdminClient({**client_config(wrong), "error_cb": errors.append, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=10)
    admin.poll(1)
    assert [e.name() for e in errors][:1] == ["_AUTHENTICATION"], errors
    assert "Invalid username or password" in errors[0].str()
    problem = connection_problem(wrong)
    assert problem is not None and "refused the login" in problem and "HERALD_KAFKA_SASL_PASSWORD" in problem
    assert "not-the-password" not in problem
    assert connection_problem(secured(Settings(), bootstrap, ca_file)) is None
    # the command line says the same, in one line
    env = {**os.environ, **security_env(bootstrap, ca_file, "not-the-password")}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "x.events"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "refused the login" in result.stderr and "Traceback" not in result.stderr
    assert "not-the-password" not in result.stderr


def test_herald_status_sees_the_secured_broker(broker, monkeypatch):
    bootstrap, ca_file = broker
    for name, value in security_env(bootstrap, ca_file).items():
        monkeypatch.setenv(name, value)
    status = infra_kafka.status()
    assert status.up and status.address == bootstrap
    monkeypatch.setenv("HERALD_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    for name in ("HERALD_KAFKA_SASL_USERNAME", "HERALD_KAFKA_SASL_PASSWORD", "HERALD_KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name)
    assert infra_kafka.status().up is False


def test_a_broker_certificate_from_another_ca_fails_the_handshake(broker, tmp_path):
    bootstrap, _ = broker
    other_ca, _ = make_certificates(tmp_path)
    problem = connection_problem(secured(Settings(), bootstrap, other_ca))
    assert problem is not None and "TLS handshake failed" in problem and "HERALD_KAFKA_SSL_CAFILE" in problem


def test_plaintext_to_a_sasl_ssl_listener_gets_no_answer(broker):
    bootstrap, _ = broker
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "error_cb": lambda _e: None}).list_topics(timeout=5)


class SecuredRegistry:
    """The shared (real) registry behind an HTTPS front that asks for basic auth, as a hosted registry does:
    a request without the right ``Authorization`` gets 401, any other is passed on as it is."""

    def __init__(self, upstream: str, cert_file: Path, user: str, password: str) -> None:
        import base64
        import threading
        from urllib.parse import urlsplit

        split = urlsplit(upstream)
        self.upstream = f"{split.scheme}://{split.netloc}"
        self.path = split.path
        self.cert_file = cert_file
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}{self.path}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._loop = None
        self._stop = None

    def __enter__(self) -> "SecuredRegistry":
        self._thread.start()
        assert self._ready.wait(10), "the HTTPS front did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        import asyncio
        import ssl

        import aiohttp
        from aiohttp import web

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.cert_file))
            async with aiohttp.ClientSession() as session:
                async def forward(request: web.Request) -> web.Response:
                    if request.headers.get("Authorization") != self.expected:
                        return web.json_response({"error_code": 401, "message": "Unauthorized"}, status=401)
                    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
                    async with session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                               data=await request.read()) as answer:
                        return web.Response(status=answer.status, body=await answer.read(),
                                            content_type=answer.content_type)

                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", forward)
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start()
                self._ready.set()
                await self._stop.wait()
                await runner.cleanup()

        asyncio.run(main())


def test_the_registry_client_uses_basic_auth_and_the_ca_file(stack, tmp_path, monkeypatch):
    from schemas.registry import Registry, RegistryUnavailable

    ca_file, cert_file = make_certificates(tmp_path)
    subject = f"reg{uuid.uuid4().hex[:8]}.events-value"
    with SecuredRegistry(Settings.from_env().schema_registry_url, cert_file, "svc", "registry-secret") as front:
        settings = dataclasses.replace(Settings.from_env(), schema_registry_url=front.url, schema_registry_username="svc",
                                       schema_registry_password="registry-secret", schema_registry_cafile=str(ca_file))
        schema_id = Registry.from_settings(settings).register_all([(subject, "NotificationEvent")])[subject]
        assert Registry.from_settings(settings, missing_retries=0).writer(schema_id)["name"].endswith("NotificationEvent")
        # the same from the environment, as every Herald process builds its registry client
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_USERNAME", "svc")
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_PASSWORD", "registry-secret")
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_CAFILE", str(ca_file))
        assert Registry(front.url).register(subject, "NotificationEvent") == schema_id
        # a wrong password: the registry cannot be used (never a record dead-lettered for it)
        with pytest.raises(RegistryUnavailable) as refused:
            Registry(front.url, password="wrong", http_retries=0).register(subject, "NotificationEvent")
        assert refused.value.status == 401 and "wrong" not in str(refused.value)
        # the system's CAs do not know the test CA: the TLS handshake fails
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            Registry(front.url, cafile="", http_retries=0).register(subject, "NotificationEvent")
