"""``infra.registry.status()`` (what ``herald status`` shows for the registry) asks a secured registry as
Herald's registry client does: basic auth from the settings or the URL, TLS verified with the CA file."""
from __future__ import annotations

import pytest

from infra import registry
from tests.integration.test_sasl_ssl import SecuredRegistry, make_certificates

pytestmark = pytest.mark.integration


def test_the_status_probe_sends_basic_auth_and_verifies_with_the_ca_file(stack, tmp_path, monkeypatch):
    upstream = registry.url()
    ca_file, cert_file = make_certificates(tmp_path)
    monkeypatch.setenv("HERALD_HOME", str(tmp_path / "home"))  # not the test servers' home: a registry Herald did not start
    for name in ("HERALD_SCHEMA_REGISTRY_USERNAME", "HERALD_SCHEMA_REGISTRY_PASSWORD", "HERALD_SCHEMA_REGISTRY_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    with SecuredRegistry(upstream, cert_file, "svc", "registry-secret") as front:
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_URL", front.url)
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_CAFILE", str(ca_file))
        assert not registry.status().up  # no credentials: 401
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_USERNAME", "svc")
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_PASSWORD", "registry-secret")
        status = registry.status()
        assert status.up and isinstance(status.detail["subjects"], int)
        assert status.version and not status.version.startswith("unknown")  # the core API, at the server's root
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_PASSWORD", "wrong")
        assert not registry.status().up
        # the credentials in the URL instead
        monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_USERNAME")
        monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_PASSWORD")
        monkeypatch.setenv("HERALD_SCHEMA_REGISTRY_URL", front.url.replace("https://", "https://svc:registry-secret@"))
        status = registry.status()
        assert status.up and "registry-secret" not in repr(status)
        # the system's CAs do not know the test CA: the handshake fails, so the registry is not up
        monkeypatch.delenv("HERALD_SCHEMA_REGISTRY_CAFILE")
        assert not registry.status().up
