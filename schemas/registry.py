"""The schema registry client Herald uses: registers its schemas and caches writer schemas by id.

Built on ``schemas.rest`` (three ccompat calls over the standard library's HTTP): one request gives up
after ``timeout_s`` and is tried ``http_retries`` more times after a short pause, so a look-up during an
outage ends within about ``(http_retries + 1) * timeout_s`` seconds per registry URL.

Every registry answer is classified:

- the id is unknown (HTTP 404, or the ccompat codes 40401/40402/40403 "subject/version/schema not
  found"): ``SchemaNotFound``. The id is asked for again a few times (a producer may have just
  registered it), then remembered as missing for ``negative_ttl_s`` in a bounded LRU of at most
  ``max_missing`` ids, so a flood of records with random ids costs one look-up per id and bounded memory;
- the registry cannot answer (HTTP 5xx, 408, 429, 401/403/407, connection refused or reset, DNS failure,
  timeout): ``RegistryUnavailable``. It is never remembered: the next look-up asks again. It is not a
  ``DecodeError``, so a record is never dead-lettered because the registry is down; the caller pauses
  and retries;
- anything else (a schema refused as incompatible, a malformed request) is raised as the client's
  ``RegistryHTTPError``: a bug or a contract breach, not an outage.

A writer schema the registry has but Herald cannot read (not Avro, or not parseable on its own) is a
``SchemaNotFound`` as well, remembered like a missing id.

On an event loop, call ``await registry.ensure(schema_id)`` before decoding: it returns at once for an
id already resolved (found or known missing), and otherwise runs the look-up in a thread, one look-up
per id however many records wait for it. The synchronous ``writer()`` then answers from the cache.

A secured registry: basic auth from ``HERALD_SCHEMA_REGISTRY_USERNAME``/``PASSWORD`` or from ``user:password@``
in the URL (one or the other), and for an ``https://`` URL the CA in ``HERALD_SCHEMA_REGISTRY_CAFILE`` (else
the system's CAs). A ``Registry`` given none of them explicitly reads those variables, so every process
that builds one from its URL alone gets them; ``Registry.from_settings`` takes them from a ``Settings``.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import fastavro

from schemas.loader import parsed, schema_text
from schemas.rest import RegistryHTTPError, RegistryRest, RegistryTransportError, rest_config, safe_url

DEFAULT_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
COMPATIBILITY = "BACKWARD_TRANSITIVE"

# ccompat error codes meaning "no such subject / version / schema"
NOT_FOUND_CODES = frozenset({40401, 40402, 40403})
# HTTP statuses meaning "the registry cannot answer now": overloaded, down, behind a failing proxy, or
# refusing our credentials. None of them says anything about the record being read.
UNAVAILABLE_STATUSES = frozenset({401, 403, 407, 408, 429})


def registry_url() -> str:
    return os.environ.get("HERALD_SCHEMA_REGISTRY_URL", DEFAULT_URL)


class SchemaNotFound(LookupError):
    """The registry has no schema Herald can read under this id. ``schema_id``; ``detail`` says why."""

    def __init__(self, schema_id: int, detail: str = "is not in the registry") -> None:
        super().__init__(f"schema id {schema_id} {detail}")
        self.schema_id = schema_id
        self.detail = detail


class RegistryUnavailable(RuntimeError):
    """The registry cannot be reached or cannot answer now (5xx, 429, refused, timed out).

    Deliberately not a ``DecodeError``: the record is probably fine, so the caller must pause and try
    again later, never dead-letter it. ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def classify(exc: BaseException, url: str, what: str,
             lookup_id: int | None = None) -> SchemaNotFound | RegistryUnavailable | None:
    """The Herald exception for a registry client error met while doing ``what`` (a phrase such as
    "looking up schema id 7", used in the message), or None for an error that is neither an unknown id
    nor an outage (raise it as it is).

    ``lookup_id`` is the id when the request was a look-up by id: only then does a 404 or a not-found
    code mean ``SchemaNotFound``. Elsewhere (registering) a 404 without a ccompat error code means the
    URL is not the ccompat API, reported as ``RegistryUnavailable`` with a hint."""
    where = safe_url(url)
    if isinstance(exc, RegistryHTTPError):
        status, code = exc.http_status_code, exc.error_code
        if status >= 500 or status in UNAVAILABLE_STATUSES:
            return RegistryUnavailable(f"schema registry at {where} answered HTTP {status} while {what}: "
                                       f"{str(exc.error_message)[:200]}", status)
        if lookup_id is not None and (status == 404 or code in NOT_FOUND_CODES):
            return SchemaNotFound(lookup_id)
        if lookup_id is None and status == 404 and code not in NOT_FOUND_CODES:
            # a 404 without a ccompat code while registering: the URL does not lead to the ccompat API
            return RegistryUnavailable(f"schema registry at {where} answered HTTP 404 while {what}: is "
                                       "HERALD_SCHEMA_REGISTRY_URL the Confluent-compatible API's address "
                                       "(for Apicurio, ending in /apis/ccompat/v7)?", status)
        return None
    if isinstance(exc, RegistryTransportError):
        return RegistryUnavailable(f"schema registry at {where} is unreachable while {what}: "
                                   f"{type(exc).__name__}: {exc}")
    return None


class Registry:
    """Registers Herald's schemas and resolves writer schemas by id (see the module's docstring).

    Thread-safe: ``writer()`` may run in the loop thread and in look-up threads at once. ``ensure()``
    must be awaited on one event loop at a time."""

    def __init__(self, url: str | None = None, missing_retries: int = 3, missing_backoff_s: float = 0.2,
                 negative_ttl_s: float = 30.0, client: RegistryRest | None = None, *,
                 max_missing: int = 10_000, timeout_s: float = 2.0, http_retries: int = 1,
                 lookup_threads: int = 4, username: str | None = None, password: str | None = None,
                 cafile: str | None = None) -> None:
        self.url = url or registry_url()
        self.client = client or RegistryRest(rest_config(
            self.url, timeout_s, http_retries,
            username=_env("HERALD_SCHEMA_REGISTRY_USERNAME") if username is None else username,
            password=_env("HERALD_SCHEMA_REGISTRY_PASSWORD") if password is None else password,
            cafile=_env("HERALD_SCHEMA_REGISTRY_CAFILE") if cafile is None else cafile))
        self._ids: dict[tuple[str, str], int] = {}
        self._writers: dict[int, dict] = {}
        # id -> (monotonic deadline, detail), oldest first; bounded by max_missing
        self._missing: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[int, asyncio.Future] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._clock = time.monotonic
        self.missing_retries = missing_retries
        self.missing_backoff_s = missing_backoff_s
        self.negative_ttl_s = negative_ttl_s
        self.max_missing = max_missing
        self.lookup_threads = lookup_threads

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "Registry":
        """A registry client for ``settings`` (a ``herald.settings.Settings``): its URL, basic auth and CA file."""
        return cls(settings.schema_registry_url, username=settings.schema_registry_username,
                   password=settings.schema_registry_password, cafile=settings.schema_registry_cafile, **kwargs)

    # -- registering -------------------------------------------------------------------------------

    def register(self, subject: str, schema_name: str, compatibility: str | None = COMPATIBILITY) -> int:
        """Register ``schema_name`` under ``subject`` (idempotent, cached) and return its id.
        Raises ``RegistryUnavailable`` when the registry cannot be reached (or its URL is not the
        ccompat API), the client's ``RegistryHTTPError`` when it refuses the schema."""
        key = (subject, schema_name)
        schema_id = self._ids.get(key)
        if schema_id is not None:
            return schema_id
        try:
            if compatibility:
                self.client.set_compatibility(subject, compatibility)
            schema_id = self.client.register_schema(subject, schema_text(schema_name))
        except Exception as exc:
            mapped = classify(exc, self.url, f"registering {schema_name} under {subject}", None)
            if mapped is None:
                raise
            raise mapped from exc
        self._writers.setdefault(schema_id, parsed(schema_name))
        self._ids[key] = schema_id
        return schema_id

    def register_all(self, subjects: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> dict[str, int]:
        """Register every ``(subject, schema name)`` pair (a process's output subjects, at start-up, so
        that ``encode`` never asks the registry mid-batch) and return ``{subject: id}``.

        Raises ``RegistryUnavailable`` naming the registry and how many subjects are left when it cannot
        be reached; a refused schema raises the client's ``RegistryHTTPError`` with the subject noted."""
        ids: dict[str, int] = {}
        for done, (subject, schema_name) in enumerate(subjects):
            try:
                ids[subject] = self.register(subject, schema_name)
            except RegistryUnavailable as exc:
                raise RegistryUnavailable(
                    f"cannot register the output schemas ({len(subjects) - done} of {len(subjects)} left, "
                    f"starting with {subject}): {exc}. Start the registry (herald up) or point "
                    "HERALD_SCHEMA_REGISTRY_URL at it.", exc.status) from exc
            except RegistryHTTPError as exc:
                exc.add_note(f"while registering {schema_name} under {subject} at {safe_url(self.url)}")
                raise
        return ids

    def register_text(self, subject: str, text: str) -> int:
        """Register a schema given as JSON text (evolved producer schemas, tests)."""
        try:
            return self.client.register_schema(subject, text)
        except Exception as exc:
            mapped = classify(exc, self.url, f"registering a schema under {subject}", None)
            if mapped is None:
                raise
            raise mapped from exc

    # -- resolving writer schemas ----------------------------------------------------------------------

    def cached(self, schema_id: int) -> bool:
        """True when ``writer(schema_id)`` answers without asking the registry (found, or recently missing)."""
        return schema_id in self._writers or self._known_missing(schema_id) is not None

    def known(self, schema_id: int) -> dict | None:
        """The parsed writer schema of ``schema_id`` when it is cached; None otherwise. Never asks."""
        return self._writers.get(schema_id)

    async def ensure(self, schema_id: int) -> None:
        """Make ``writer(schema_id)`` answer from the cache, without blocking the running loop.

        Returns at once when the id is cached (found or known missing). Otherwise the look-up (with its
        retries for a just-registered id) runs in a registry thread; concurrent callers for the same id
        share that one look-up. An unknown id returns normally (``writer`` then raises ``SchemaNotFound``);
        an outage raises ``RegistryUnavailable`` to every waiter and leaves nothing cached. Cancelling one
        waiter does not cancel the look-up for the others."""
        if schema_id in self._writers or self._known_missing(schema_id) is not None:
            return
        loop = asyncio.get_running_loop()
        future = self._inflight.get(schema_id)
        if future is None or future.get_loop() is not loop:
            future = loop.run_in_executor(self._pool(), self._lookup, schema_id)
            self._inflight[schema_id] = future
            future.add_done_callback(partial(self._landed, schema_id))
        await asyncio.shield(future)

    def prefetch(self, schema_id: int) -> None:
        """The blocking form of ``ensure``, for a thread: resolve ``schema_id`` into the cache. An unknown
        id returns normally; raises ``RegistryUnavailable`` on an outage."""
        self._lookup(schema_id)

    def writer(self, schema_id: int) -> dict:
        """The parsed writer schema of ``schema_id``; raises ``SchemaNotFound`` when the registry has none
        (or none Herald can read) and ``RegistryUnavailable`` when it cannot answer. Answers from the
        cache when it can; otherwise asks the registry here, in the calling thread (``ensure`` first on a
        loop)."""
        found = self._writers.get(schema_id)
        if found is not None:
            return found
        detail = self._known_missing(schema_id)
        if detail is not None:
            raise SchemaNotFound(schema_id, detail)
        return self._fetch(schema_id)

    def missing_count(self) -> int:
        """How many ids are remembered as missing (expired ones included until they are met or pushed out)."""
        return len(self._missing)

    def close(self) -> None:
        """Stop the look-up threads (waiting for a running look-up, which is bounded by the timeouts)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _fetch(self, schema_id: int) -> dict:
        attempt = 0
        while True:
            try:
                schema_type, schema_str = self.client.get_schema(schema_id)
                break
            except Exception as exc:
                mapped = classify(exc, self.url, f"looking up schema id {schema_id}", schema_id)
                if mapped is None:
                    raise
                if isinstance(mapped, RegistryUnavailable) or attempt >= self.missing_retries:
                    if isinstance(mapped, SchemaNotFound):
                        self._remember_missing(schema_id, mapped.detail)
                    raise mapped from exc
            attempt += 1
            time.sleep(self.missing_backoff_s * attempt)
        if schema_type != "AVRO":
            raise self._unreadable(schema_id, f"is a {schema_type} schema, not Avro")
        try:
            writer = fastavro.parse_schema(json.loads(schema_str))
        except Exception as exc:  # noqa: BLE001 - e.g. a schema with references: not readable on its own
            raise self._unreadable(schema_id, "does not parse as a self-contained Avro schema "
                                   f"({type(exc).__name__}: {exc})") from None
        self._writers[schema_id] = writer
        with self._lock:
            self._missing.pop(schema_id, None)
        return writer

    def _unreadable(self, schema_id: int, detail: str) -> SchemaNotFound:
        self._remember_missing(schema_id, detail)
        return SchemaNotFound(schema_id, detail)

    def _known_missing(self, schema_id: int) -> str | None:
        """The reason ``schema_id`` is remembered as missing, or None (an expired entry is dropped)."""
        if not self._missing:
            return None
        with self._lock:
            entry = self._missing.get(schema_id)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._missing[schema_id]
                return None
            self._missing.move_to_end(schema_id)
            return entry[1]

    def _remember_missing(self, schema_id: int, detail: str) -> None:
        with self._lock:
            self._missing[schema_id] = (self._clock() + self.negative_ttl_s, detail)
            self._missing.move_to_end(schema_id)
            while len(self._missing) > self.max_missing:
                self._missing.popitem(last=False)

    def _lookup(self, schema_id: int) -> None:
        try:
            self.writer(schema_id)
        except SchemaNotFound:
            pass

    def _pool(self) -> ThreadPoolExecutor:
        # its own threads: a look-up waiting on a dead registry must not occupy the loop's default
        # executor, which other parts of the process use.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.lookup_threads, thread_name_prefix="herald-registry")
        return self._executor

    def _landed(self, schema_id: int, future: asyncio.Future) -> None:
        if self._inflight.get(schema_id) is future:
            del self._inflight[schema_id]
        if not future.cancelled():
            future.exception()  # retrieved here, so an outage nobody still awaits is not logged as lost


def _env(name: str) -> str:
    return os.environ.get(name, "")
