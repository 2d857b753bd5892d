"""How Herald's Kafka clients are configured, one way to make a producer, and to queue a record on it.

Every producer Herald makes partitions keys as Kafka's Java clients and Faust do (``murmur2_random``), so a
record keyed by a user id lands on that user's home partition whichever tool wrote it. ``produce`` waits
for room when librdkafka's local queue is full instead of raising ``BufferError`` at the caller.

The connection settings (``HERALD_KAFKA_SECURITY_PROTOCOL``, ``HERALD_KAFKA_SASL_*``, ``HERALD_KAFKA_SSL_*``)
become client configuration here and nowhere else, in the three forms Herald's clients take:
``client_config`` (confluent-kafka producers, consumers and admin clients), ``aiokafka_security`` (aiokafka
keyword arguments) and ``faust_credentials`` (the Faust app's ``broker_credentials``). Each validates the
settings first (``check_security``) and raises ``KafkaSecurityError`` saying which variable to fix.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

if TYPE_CHECKING:
    import ssl

    from herald.settings import Settings

PARTITIONER = "murmur2_random"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """The Kafka connection settings do not make sense together; the message names the variable to fix."""


def check_security(settings: "Settings") -> tuple[str, str]:
    """Validate the connection settings and return ``(protocol, mechanism)``, both upper-case.

    Rules: the protocol is one of ``PROTOCOLS`` (any case); with a SASL_* protocol the mechanism is one of
    ``MECHANISMS`` and both user name and password are set; every file named must exist and be readable
    (a CA file only with SSL or SASL_SSL, a client key only beside a client certificate). Credentials or
    files given to a protocol that does not use them are an error rather than silently ignored: they mean
    the protocol was forgotten."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(f"HERALD_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r} is not one of "
                                 f"{', '.join(PROTOCOLS)}; set it to the protocol of the broker listener you connect to")
    mechanism = settings.kafka_sasl_mechanism.strip().upper()
    sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
    if sasl:
        if mechanism not in MECHANISMS:
            raise KafkaSecurityError(f"HERALD_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} is not one of "
                                     f"{', '.join(MECHANISMS)}; use the mechanism the broker's SASL listener enables")
        missing = [v for v, value in (("HERALD_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                                      ("HERALD_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password)) if not value]
        if missing:
            raise KafkaSecurityError(f"HERALD_KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}; "
                                     "set the SASL credentials the broker knows")
    elif settings.kafka_sasl_username or settings.kafka_sasl_password:
        raise KafkaSecurityError(f"HERALD_KAFKA_SASL_USERNAME/PASSWORD are set but HERALD_KAFKA_SECURITY_PROTOCOL is "
                                 f"{protocol}, which sends no credentials; set it to SASL_SSL (or SASL_PLAINTEXT)")
    files = (("HERALD_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile), ("HERALD_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
             ("HERALD_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile))
    for variable, path in files:
        if not path:
            continue
        if not tls:
            raise KafkaSecurityError(f"{variable} is set but HERALD_KAFKA_SECURITY_PROTOCOL is {protocol}, which does "
                                     "not use TLS; set it to SSL or SASL_SSL, or unset the file")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise KafkaSecurityError(f"{variable}={path!r} is not a readable file; point it at the PEM file")
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise KafkaSecurityError("HERALD_KAFKA_SSL_KEYFILE is set without HERALD_KAFKA_SSL_CERTFILE; set the client "
                                 "certificate that goes with the key")
    return protocol, mechanism


def security_config(settings: "Settings") -> dict[str, Any]:
    """The confluent-kafka (librdkafka) security keys for ``settings``; empty for PLAINTEXT, so a plaintext
    client's configuration is exactly what it was before these settings existed. librdkafka checks the
    broker's host name against its certificate (``ssl.endpoint.identification.algorithm=https``)."""
    protocol, mechanism = check_security(settings)
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        config.update({"sasl.mechanism": mechanism, "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password})
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    if settings.kafka_ssl_certfile:
        config["ssl.certificate.location"] = settings.kafka_ssl_certfile
    if settings.kafka_ssl_keyfile:
        config["ssl.key.location"] = settings.kafka_ssl_keyfile
    return config


def client_config(settings: "Settings", **overrides: Any) -> dict[str, Any]:
    """The base of every confluent-kafka client's configuration: the bootstrap servers and the security keys,
    then ``overrides`` (dots or underscores: ``group_id="g"``). Keys that are Python-only and spelt with
    underscores (``error_cb``, ``log_level``, ``on_delivery``) go in a dict merged with the result instead."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, **security_config(settings)}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


def ssl_context(settings: "Settings") -> "ssl.SSLContext | None":
    """The TLS context of Herald's asyncio clients (aiokafka, Faust) for SSL and SASL_SSL, else None: the CA
    file (or the system's CAs), the client certificate if any, host name checked."""
    from aiokafka.helpers import create_ssl_context

    protocol, _ = check_security(settings)
    if protocol not in ("SSL", "SASL_SSL"):
        return None
    return create_ssl_context(cafile=settings.kafka_ssl_cafile or None, certfile=settings.kafka_ssl_certfile or None,
                              keyfile=settings.kafka_ssl_keyfile or None)


def aiokafka_security(settings: "Settings") -> dict[str, Any]:
    """The aiokafka client keyword arguments for ``settings``: ``security_protocol`` and, as it needs,
    ``sasl_mechanism``, ``sasl_plain_username``/``sasl_plain_password`` (aiokafka's names, used by SCRAM
    too) and ``ssl_context``."""
    protocol, mechanism = check_security(settings)
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        kwargs.update({"sasl_mechanism": mechanism, "sasl_plain_username": settings.kafka_sasl_username,
                       "sasl_plain_password": settings.kafka_sasl_password})
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def faust_credentials(settings: "Settings") -> Any:
    """The Faust app's ``broker_credentials`` for ``settings``: None for PLAINTEXT, ``faust.SSLCredentials``
    for SSL, ``faust.SASLCredentials`` for SASL_* (with the TLS context for SASL_SSL, which is how Faust
    tells SASL_SSL from SASL_PLAINTEXT). Faust hands them to every aiokafka consumer, producer and admin
    request it makes, as ``aiokafka_security`` would."""
    import faust

    protocol, mechanism = check_security(settings)
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 ssl_context=context, mechanism=mechanism)


def connection_problem(settings: "Settings", timeout: float = 5.0) -> str | None:
    """None when Kafka answers a metadata request within ``timeout`` with these settings; else one line saying
    what went wrong and which settings to check: the SASL login refused (wrong user, password or mechanism),
    the TLS handshake failed (the broker's certificate not signed by the CA file's CA, or its name not the one
    in the bootstrap address), or no answer at all (nothing listening, or a protocol the listener does not
    speak). The line quotes librdkafka's own reason, which carries no credentials."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    config: dict[str, Any] = {**client_config(settings), "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException:
        admin.poll(0.5)  # delivers the reasons to error_cb
    where = f"Kafka at {settings.kafka_bootstrap}"
    for error in errors:
        reason = error.str().split(": ", 1)[-1]
        if error.code() == KafkaError._AUTHENTICATION:
            return (f"{where} refused the login: {reason}; check HERALD_KAFKA_SASL_USERNAME, HERALD_KAFKA_SASL_PASSWORD "
                    "and HERALD_KAFKA_SASL_MECHANISM.")
        if error.code() == KafkaError._SSL:
            return (f"{where}: the TLS handshake failed: {reason}; check HERALD_KAFKA_SSL_CAFILE (the CA that signed the "
                    "broker's certificate) and that the host in HERALD_KAFKA_BOOTSTRAP is a name in that certificate.")
    return (f"{where} is not answering with HERALD_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}; is the "
            "broker up, and does that listener speak this protocol?")


def producer_config(bootstrap: "str | Settings", **overrides: Any) -> dict[str, Any]:
    """The base configuration: Kafka's default partitioner, idempotence, a short linger. Given ``Settings``
    (rather than a bare bootstrap address) it carries the security keys too (``client_config``)."""
    base = {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else client_config(bootstrap)
    config: dict[str, Any] = {**base, "partitioner": PARTITIONER, "enable.idempotence": True, "linger.ms": 5}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


def make_producer(bootstrap: "str | Settings", **overrides: Any) -> Producer:
    """A producer with ``producer_config``; overrides use dots or underscores (``linger_ms=20``). Pass the
    ``Settings`` so the producer connects as they say; a bare address means a plaintext connection."""
    return Producer(producer_config(bootstrap, **overrides))


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, *,
            partition: int | None = None, headers: list | None = None,
            on_delivery: Callable[[Any, Any], None] | None = None, timestamp: int | None = None) -> None:
    """Queue one record (``timestamp`` in ms; None: now), waiting (polling delivery reports) while the local
    queue is full."""
    kwargs: dict[str, Any] = {}
    if timestamp is not None:
        kwargs["timestamp"] = timestamp
    if partition is not None:
        kwargs["partition"] = partition
    if headers is not None:
        kwargs["headers"] = headers
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def home_partition(key: bytes, partitions: int) -> int:
    """Where a record keyed ``key`` belongs: Kafka's default (Java) partitioner, murmur2 of the key."""
    return _home(key, partitions)


@lru_cache(maxsize=65_536)
def _home(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
