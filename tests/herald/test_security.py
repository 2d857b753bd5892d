"""The one place settings become Kafka and registry client configuration: every protocol, and the errors."""
from __future__ import annotations

import ssl

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from herald.kafka import (
    KafkaSecurityError,
    aiokafka_security,
    client_config,
    faust_credentials,
    make_producer,
    producer_config,
    security_config,
)
from herald.settings import Settings
from herald.topics import check_replication, topic_configs, weak_topics
from schemas.registry import Registry
from schemas.rest import rest_config as registry_config
from streams.app import create_app

SASL = {"kafka_sasl_username": "svc", "kafka_sasl_password": "pw"}


@pytest.fixture
def ca_file(tmp_path):
    """A real CA certificate (Python's ssl module loads it when it builds a context)."""
    from tests.integration.test_sasl_ssl import make_certificates

    ca, _ = make_certificates(tmp_path)
    return str(ca)


def test_plaintext_adds_nothing_so_the_local_stack_config_is_unchanged():
    s = Settings(kafka_bootstrap="h:1")
    assert security_config(s) == {}
    assert client_config(s) == {"bootstrap.servers": "h:1"}
    assert client_config(s, group_id="g") == {"bootstrap.servers": "h:1", "group.id": "g"}
    assert aiokafka_security(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None
    assert producer_config("h:1") == producer_config(s)


def test_ssl_with_ca_and_client_certificate(ca_file, tmp_path):
    s = Settings(kafka_security_protocol="ssl", kafka_ssl_cafile=ca_file)
    assert security_config(s) == {"security.protocol": "SSL", "ssl.ca.location": ca_file}
    kwargs = aiokafka_security(s)
    assert kwargs["security_protocol"] == "SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname and "sasl_mechanism" not in kwargs
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    mtls = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca_file, kafka_ssl_certfile=str(cert),
                    kafka_ssl_keyfile=str(cert))
    assert security_config(mtls)["ssl.certificate.location"] == str(cert)
    assert security_config(mtls)["ssl.key.location"] == str(cert)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_plaintext_each_mechanism(mechanism):
    s = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism, **SASL)
    assert security_config(s) == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism.upper(),
                                  "sasl.username": "svc", "sasl.password": "pw"}
    assert aiokafka_security(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism.upper(),
                                    "sasl_plain_username": "svc", "sasl_plain_password": "pw"}
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    # what Faust hands aiokafka is what aiokafka_security says
    assert credentials_to_aiokafka_auth(creds) == {**aiokafka_security(s), "ssl_context": None}


def test_sasl_ssl_carries_credentials_and_the_tls_context(ca_file):
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_ssl_cafile=ca_file, **SASL)
    assert security_config(s) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
                                  "sasl.password": "pw", "ssl.ca.location": ca_file}
    auth = credentials_to_aiokafka_auth(faust_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert producer_config(s)["sasl.username"] == "svc" and producer_config(s)["partitioner"] == "murmur2_random"
    make_producer(s, linger_ms=1).flush(0)  # librdkafka accepts the configuration


def test_the_faust_app_gets_the_credentials_and_the_replication_factor():
    s = Settings(kafka_security_protocol="SASL_PLAINTEXT", topic_replication_factor=3, topic_min_insync_replicas=2,
                 app_id="security-test-app", data_dir="/tmp/herald-security-test", **SASL)
    app = create_app(s)
    assert app.conf.topic_replication_factor == 3
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "svc"


@pytest.mark.parametrize("over, variable", [
    ({"kafka_security_protocol": "TLS"}, "HERALD_KAFKA_SECURITY_PROTOCOL"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", **SASL}, "HERALD_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "svc"}, "HERALD_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "HERALD_KAFKA_SASL_USERNAME"),
    ({**SASL}, "SASL_SSL"),  # credentials with PLAINTEXT: the protocol was forgotten
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "HERALD_KAFKA_SSL_CAFILE"),
    ({"kafka_ssl_cafile": "/etc/hostname"}, "does not use TLS"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hostname"}, "without HERALD_KAFKA_SSL_CERTFILE"),
])
def test_bad_settings_say_which_variable_to_fix(over, variable):
    s = Settings(**over)
    for build in (security_config, aiokafka_security, faust_credentials, client_config):
        with pytest.raises(KafkaSecurityError, match=variable):
            build(s)


def test_replication_settings_reach_the_topics_and_are_validated():
    configs = topic_configs(Settings(topic_prefix="p.", topic_replication_factor=3, topic_min_insync_replicas=2))
    assert configs["p.events"] == {"min.insync.replicas": "2"}
    assert configs["p.preferences"] == {"min.insync.replicas": "2", "cleanup.policy": "compact"}
    assert configs["herald-pipeline-ticks"]["min.insync.replicas"] == "2"
    assert check_replication(Settings()) == (1, 1)
    with pytest.raises(ValueError, match="HERALD_TOPIC_REPLICATION_FACTOR=0"):
        check_replication(Settings(topic_replication_factor=0))
    with pytest.raises(ValueError, match="HERALD_TOPIC_MIN_INSYNC_REPLICAS=3"):
        check_replication(Settings(topic_replication_factor=2, topic_min_insync_replicas=3))


def test_weak_topics_only_on_a_cluster_of_three_brokers_or_more():
    topics = {"h.events": (1, 1), "h.decisions": (3, 1), "h.reads": (3, 2)}
    assert weak_topics(1, topics) == [] and weak_topics(2, topics) == []
    warnings = weak_topics(3, topics)
    assert len(warnings) == 2
    assert warnings[0].startswith("h.decisions: min.insync.replicas 1 < 2") and "replication factor" not in warnings[0]
    assert warnings[1].startswith("h.events: replication factor 1 < 3, min.insync.replicas 1 < 2")


def test_registry_basic_auth_and_ca(ca_file):
    url = "https://registry.example:8081/apis/ccompat/v7"
    config = registry_config(url, username="svc", password="pw", cafile=ca_file)
    assert config.auth == ("svc", "pw") and config.cafile == ca_file and config.context is not None
    assert registry_config(url).auth is None
    registry = Registry(url, username="svc", password="p:w", cafile=ca_file)
    assert registry.client.config.auth == ("svc", "p:w")  # a colon in the password survives
    registry = Registry.from_settings(Settings(schema_registry_url=url, schema_registry_username="a",
                                               schema_registry_password="b"))
    assert registry.client.config.auth == ("a", "b")
    with pytest.raises(ValueError, match="given twice"):
        registry_config("https://u:p@registry.example/x", username="svc", password="pw")
    with pytest.raises(ValueError, match="HERALD_SCHEMA_REGISTRY_USERNAME"):
        registry_config(url, password="pw")
    with pytest.raises(ValueError, match="HERALD_SCHEMA_REGISTRY_CAFILE"):
        registry_config(url, cafile="/nonexistent/ca.pem")


def test_registry_reads_its_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_USERNAME", "envuser")
    monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_PASSWORD", "envpw")
    assert Registry("http://127.0.0.1:1/apis/ccompat/v7").client.config.auth == ("envuser", "envpw")
    monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_USERNAME")
    monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_PASSWORD")
    assert Registry("http://u:p@127.0.0.1:1/apis/ccompat/v7").client.config.auth == ("u", "p")


def test_connection_problem_names_a_broker_that_does_not_answer():
    from herald.kafka import connection_problem
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    problem = connection_problem(Settings(kafka_bootstrap=f"127.0.0.1:{port}"), timeout=1.0)
    assert problem is not None and f"Kafka at 127.0.0.1:{port} is not answering" in problem
    assert "PLAINTEXT" in problem
    with pytest.raises(KafkaSecurityError):
        connection_problem(Settings(kafka_security_protocol="SASL_SSL"), timeout=1.0)
