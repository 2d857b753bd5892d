"""The registry client's rules that need no registry: how an answer is classified, the bounded cache of
missing ids, and what an unreachable registry (a closed local port) makes each call raise."""
import socket

import pytest

from schemas.codec import Codec, DecodeError
from schemas.loader import parsed
from schemas.registry import Registry, RegistryUnavailable, SchemaNotFound, classify
from schemas.rest import RegistryHTTPError as SchemaRegistryError
from schemas.rest import RegistryTransportError, rest_config, safe_url

URL = "http://127.0.0.1:28081/apis/ccompat/v7"


def closed_port_url() -> str:
    """The address of a local port nothing listens on: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/apis/ccompat/v7"


@pytest.mark.parametrize("status, code", [(404, 40403), (404, -1), (404, 40401), (422, 40403)])
def test_an_unknown_id_is_schema_not_found(status, code):
    found = classify(SchemaRegistryError(status, code, "Schema 7 not found."), URL, "looking up schema id 7", 7)
    assert isinstance(found, SchemaNotFound) and found.schema_id == 7


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408, 401, 403])
def test_an_overloaded_down_or_refusing_registry_is_unavailable(status):
    for lookup_id in (7, None):
        found = classify(SchemaRegistryError(status, 50001, "boom"), URL, "doing it", lookup_id)
        assert isinstance(found, RegistryUnavailable) and found.status == status
        assert not isinstance(found, (DecodeError, LookupError))


@pytest.mark.parametrize("exc", [RegistryTransportError("ConnectionRefusedError: [Errno 111] Connection refused"),
                                 RegistryTransportError("TimeoutError: timed out")])
def test_no_answer_at_all_is_unavailable(exc):
    found = classify(exc, URL, "looking up schema id 7", 7)
    assert isinstance(found, RegistryUnavailable) and found.status is None


def test_a_refused_schema_or_a_foreign_error_is_neither():
    assert classify(SchemaRegistryError(409, 409, "incompatible"), URL, "registering", None) is None
    assert classify(SchemaRegistryError(422, 42201, "invalid schema"), URL, "registering", None) is None
    assert classify(ValueError("no"), URL, "looking up schema id 7", 7) is None


def test_a_404_while_registering_points_at_the_url_unless_the_registry_named_what_is_missing():
    wrong_url = classify(SchemaRegistryError(404, -1, "Unknown Schema Registry Error: b'<html>'"), URL, "registering", None)
    assert isinstance(wrong_url, RegistryUnavailable) and "/apis/ccompat/v7" in str(wrong_url)
    assert classify(SchemaRegistryError(404, 40401, "Subject not found"), URL, "registering", None) is None


def test_messages_never_carry_the_urls_credentials():
    url = "https://herald:s3cret@registry.example:8081/apis/ccompat/v7,http://u:p@other/x"
    assert safe_url(url) == "https://registry.example:8081/apis/ccompat/v7,http://other/x"
    assert "s3cret" not in str(classify(SchemaRegistryError(503, -1, "down"), url, "looking up schema id 1", 1))


def test_the_client_is_configured_to_give_up_quickly():
    registry = Registry(URL, timeout_s=1.5, http_retries=2)
    assert (registry.client.config.timeout_s, registry.client.config.retries) == (1.5, 2)
    assert rest_config(URL).retries == 1


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_miss_cache_keeps_at_most_max_missing_ids_dropping_the_least_recently_used():
    registry = Registry(URL, max_missing=3)
    for schema_id in (1, 2, 3):
        registry._remember_missing(schema_id, "is not in the registry")
    assert registry.cached(1)  # 1 is now the most recently used
    for schema_id in (4, 5):
        registry._remember_missing(schema_id, "is not in the registry")
    assert registry.missing_count() == 3
    assert [i for i in range(1, 6) if registry.cached(i)] == [1, 4, 5]
    for schema_id in range(100, 5100):
        registry._remember_missing(schema_id, "is not in the registry")
    assert registry.missing_count() == 3 and list(registry._missing) == [5097, 5098, 5099]


def test_a_missing_id_is_forgotten_after_its_ttl():
    registry = Registry(URL, negative_ttl_s=30)
    registry._clock = clock = Clock()
    registry._remember_missing(9, "is not in the registry")
    clock.now += 29.9
    assert registry.cached(9)
    with pytest.raises(SchemaNotFound):
        registry.writer(9)
    clock.now += 0.2
    assert not registry.cached(9) and registry.missing_count() == 0


def test_a_known_missing_id_decodes_as_schema_not_found_without_asking_the_registry():
    registry = Registry(closed_port_url(), http_retries=0)  # asking would raise RegistryUnavailable
    registry._remember_missing(12, "is not in the registry")
    with pytest.raises(DecodeError) as info:
        Codec(registry).decode(b"\x00\x00\x00\x00\x0c\x02", "NotificationEvent")
    assert info.value.reason == "SCHEMA_NOT_FOUND" and "schema id 12" in info.value.message


def test_an_unreachable_registry_is_unavailable_for_every_call_and_nothing_is_cached():
    registry = Registry(closed_port_url(), http_retries=0)
    codec = Codec(registry)
    with pytest.raises(RegistryUnavailable) as info:
        codec.decode(b"\x00\x00\x00\x00\x0c\x02", "NotificationEvent")
    assert "unreachable while looking up schema id 12" in str(info.value)
    assert not registry.cached(12) and registry.missing_count() == 0
    with pytest.raises(RegistryUnavailable):
        registry.prefetch(12)
    with pytest.raises(RegistryUnavailable):
        codec.encode("x-value", "Decision", {})
    with pytest.raises(RegistryUnavailable) as info:
        registry.register_all([("a-value", "Decision"), ("b-value", "DeliveryRequest")])
    assert "2 of 2 left, starting with a-value" in str(info.value) and "HERALD_SCHEMA_REGISTRY_URL" in str(info.value)
    registry.close()


async def test_ensure_raises_unavailable_and_leaves_no_look_up_behind():
    registry = Registry(closed_port_url(), http_retries=0)
    with pytest.raises(RegistryUnavailable):
        await registry.ensure(12)
    assert registry._inflight == {} and not registry.cached(12)
    registry.close()


async def test_ensure_and_prepare_return_at_once_for_a_cached_id():
    registry = Registry(closed_port_url(), http_retries=0)
    registry._writers[7] = parsed("NotificationEvent")
    registry._remember_missing(8, "is not in the registry")
    await registry.ensure(7)
    await registry.ensure(8)
    await Codec(registry).prepare(b"\x00\x00\x00\x00\x07")
    await Codec(registry).prepare(b"{}")  # no header: decode reports it
    await Codec(registry).prepare(None)
    assert registry._executor is None  # no look-up thread was ever needed


def test_unavailable_is_not_a_decode_error():
    assert not issubclass(RegistryUnavailable, (DecodeError, LookupError, ValueError))
