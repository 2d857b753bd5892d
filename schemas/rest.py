"""The few calls Herald makes to a Confluent-compatible schema registry, over the standard library's HTTP.

Herald needs three of the ccompat API's calls: a writer schema by id, registering a schema under a
subject, and setting a subject's compatibility (plus a plain GET for the stack's readiness checks).
They are made with ``urllib.request`` rather than confluent-kafka's ``SchemaRegistryClient``: that client
brings httpx, authlib and cryptography into every worker's memory (BENCHMARKS.md has what that cost) for
calls made a handful of times per process.

One request gives up after ``timeout_s`` and is tried ``retries`` more times, after a pause of up to
100 ms then 200 ms (full jitter, at most 500 ms), when the registry answers 408, 429 or 5xx or does not
answer at all. With several comma-separated URLs a request that still fails moves on to the next one.

Outcomes, for ``schemas.registry.classify`` to sort:

- an answer that is not 2xx raises ``RegistryHTTPError`` with the HTTP status, the ccompat ``error_code``
  (-1 when the body carries none, as from a proxy's HTML page) and the message;
- no answer (refused, reset, DNS, TLS, timed out) raises ``RegistryTransportError``.

Credentials: ``user:password@`` in the (first) URL, or ``username``/``password``, never both; for
``https://`` the CA file ``cafile`` (else the system's CAs). Neither appears in any message.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import random
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_WAIT_MS = 100
RETRY_MAX_WAIT_MS = 500
ACCEPT = "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryHTTPError(Exception):
    """The registry answered with a status outside 2xx. ``http_status_code``, ``error_code`` (the ccompat
    code, -1 when the answer carried none) and ``error_message``."""

    def __init__(self, http_status_code: int, error_code: int, error_message: str) -> None:
        super().__init__(f"HTTP {http_status_code} (error code {error_code}): {error_message}")
        self.http_status_code = http_status_code
        self.error_code = error_code
        self.error_message = error_message


class RegistryTransportError(OSError):
    """No answer came: the connection was refused or reset, the name did not resolve, TLS failed, or the
    request timed out."""


@dataclass(frozen=True)
class RestConfig:
    """How to reach the registry: the base URLs (credentials removed), the basic auth pair, the CA file."""

    base_urls: tuple[str, ...]
    auth: tuple[str, str] | None = None
    cafile: str = ""
    timeout_s: float = 2.0
    retries: int = 1
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def rest_config(url: str, timeout_s: float = 2.0, retries: int = 1, *, username: str = "", password: str = "",
                cafile: str = "") -> RestConfig:
    """The ``RestConfig`` for ``url`` (one or more comma-separated base URLs).

    ``username``/``password`` add basic auth (refused beside ``user:password@`` in the URL, and a password
    without a user name); ``cafile`` is the PEM CA that verifies an https registry (it must be a readable
    file). Raises ``ValueError`` naming the variable to fix."""
    bases, in_url = [], None
    for one in url.split(","):
        split = urlsplit(one.strip().rstrip("/"))
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"HERALD_SCHEMA_REGISTRY_URL has {_without_credentials(one.strip())!r}, which is not an "
                             "http:// or https:// address; for Apicurio use http://host:port/apis/ccompat/v7")
        if split.username and in_url is None:
            in_url = (unquote(split.username), unquote(split.password or ""))
        bases.append(_without_credentials(one.strip().rstrip("/")))
    auth = in_url
    if username or password:
        if not username:
            raise ValueError("HERALD_SCHEMA_REGISTRY_PASSWORD is set without HERALD_SCHEMA_REGISTRY_USERNAME; set both")
        if in_url is not None:
            raise ValueError("the registry credentials are given twice: in HERALD_SCHEMA_REGISTRY_URL (user:password@) "
                             "and in HERALD_SCHEMA_REGISTRY_USERNAME; keep one")
        auth = (username, password)
    context = None
    if cafile:
        if not os.path.isfile(cafile) or not os.access(cafile, os.R_OK):
            raise ValueError(f"HERALD_SCHEMA_REGISTRY_CAFILE={cafile!r} is not a readable file; point it at the PEM CA "
                             "that signed the registry's certificate")
    if any(base.startswith("https:") for base in bases):
        context = ssl.create_default_context(cafile=cafile or None)
    return RestConfig(tuple(bases), auth, cafile, timeout_s, retries, context)


def safe_url(url: str) -> str:
    """``url`` (one or more comma-separated URLs) without any ``user:password@`` part or query, for messages
    and logs."""
    return ",".join(_without_credentials(one.strip(), query=False) for one in url.split(","))


def _without_credentials(url: str, query: bool = True) -> str:
    split = urlsplit(url)
    host = split.hostname or ""
    if split.port:
        host = f"{host}:{split.port}"
    return urlunsplit((split.scheme, host, split.path, split.query if query else "", ""))


def _jitter_s(attempt: int) -> float:
    return random.random() * min(RETRY_WAIT_MS * 2.0 ** attempt, RETRY_MAX_WAIT_MS) / 1000  # noqa: S311 - a pause, not a secret


class RegistryRest:
    """The ccompat calls Herald makes (see the module's docstring). Thread-safe: it keeps no connection."""

    def __init__(self, config: RestConfig) -> None:
        self.config = config
        self._headers = {"Accept": ACCEPT}
        if config.auth is not None:
            pair = f"{config.auth[0]}:{config.auth[1]}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    def get_schema(self, schema_id: int) -> tuple[str, str]:
        """``(schema type, schema text)`` of ``schema_id``; the type is "AVRO" when the registry names none."""
        answer = self.request("GET", f"schemas/ids/{int(schema_id)}")
        return (answer.get("schemaType") or "AVRO"), answer["schema"]

    def register_schema(self, subject: str, text: str) -> int:
        """Register the Avro schema ``text`` under ``subject`` (the registry answers the existing id for a
        schema it has) and return its id."""
        return int(self.request("POST", f"subjects/{quote(subject, safe='')}/versions?normalize=False",
                                {"schema": text})["id"])

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level. Apicurio creates a subject's rule on the first PUT and
        answers 409 to a PUT that races it ("A rule named 'COMPATIBILITY' already exists"), as when two
        workers start at once on new topics: the rule exists then, and the same PUT again updates it."""
        path, body = f"config/{quote(subject, safe='')}", {"compatibility": level.upper()}
        try:
            self.request("PUT", path, body)
        except RegistryHTTPError as exc:
            if exc.http_status_code != 409:
                raise
            self.request("PUT", path, body)

    def request(self, method: str, path: str, body: dict | None = None):
        """The decoded JSON answer to ``method path`` (None for an empty answer), trying each base URL in
        turn and each ``retries`` more times on a retriable status or no answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = CONTENT_TYPE
        last = len(self.config.base_urls) - 1
        for index, base in enumerate(self.config.base_urls):
            try:
                return self._send(f"{base}/{path.lstrip('/')}", method, headers, data)
            except RegistryHTTPError as exc:
                if exc.http_status_code not in RETRIABLE_STATUSES or index == last:
                    raise
            except RegistryTransportError:
                if index == last:
                    raise
        raise AssertionError("unreachable: the last URL's outcome is always returned or raised")

    def _send(self, url: str, method: str, headers: dict, data: bytes | None):
        attempt = 0
        while True:
            try:
                return self._once(url, method, headers, data)
            except RegistryHTTPError as exc:
                if exc.http_status_code not in RETRIABLE_STATUSES or attempt >= self.config.retries:
                    raise
            except RegistryTransportError:
                if attempt >= self.config.retries:
                    raise
            time.sleep(_jitter_s(attempt))
            attempt += 1

    def _once(self, url: str, method: str, headers: dict, data: bytes | None):
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s,  # noqa: S310 - the configured registry
                                        context=self.config.context) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            try:
                content = exc.read()
            except OSError:
                content = b""
            finally:
                exc.close()
            raise _http_error(exc.code, content) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise RegistryTransportError(f"{type(reason).__name__}: {reason}") from None
        return json.loads(content) if content else None


def _http_error(status: int, content: bytes) -> RegistryHTTPError:
    try:
        answer = json.loads(content)
        return RegistryHTTPError(status, int(answer.get("error_code", -1)), str(answer.get("message")))
    except (ValueError, TypeError, AttributeError):
        return RegistryHTTPError(status, -1, f"Unknown Schema Registry Error: {content[:200]!r}")
