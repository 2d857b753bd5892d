"""The schema registry client Herald uses: registers its schemas and caches writer schemas by id.

Built on confluent-kafka's ``SchemaRegistryClient`` (which itself caches by id and subject), so a
message costs no registry round trip once its schema id has been seen. An id the registry does not
know is asked for again a few times (a producer may have just registered it), then reported as
missing, and remembered as missing for a while so a flood of bad records does not stall the stream.
"""
from __future__ import annotations

import json
import os
import time

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.loader import parsed, schema_text

DEFAULT_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
COMPATIBILITY = "BACKWARD_TRANSITIVE"


def registry_url() -> str:
    return os.environ.get("HERALD_SCHEMA_REGISTRY_URL", DEFAULT_URL)


class SchemaNotFound(LookupError):
    pass


class Registry:
    """Registers Herald's schemas and resolves writer schemas by id."""

    def __init__(self, url: str | None = None, missing_retries: int = 3, missing_backoff_s: float = 0.2,
                 negative_ttl_s: float = 30.0, client: SchemaRegistryClient | None = None) -> None:
        self.url = url or registry_url()
        self.client = client or SchemaRegistryClient({"url": self.url})
        self._ids: dict[tuple[str, str], int] = {}
        self._writers: dict[int, dict] = {}
        self._missing: dict[int, float] = {}
        self.missing_retries = missing_retries
        self.missing_backoff_s = missing_backoff_s
        self.negative_ttl_s = negative_ttl_s

    def register(self, subject: str, schema_name: str, compatibility: str | None = COMPATIBILITY) -> int:
        """Register ``schema_name`` under ``subject`` (idempotent) and return its id."""
        key = (subject, schema_name)
        if key not in self._ids:
            if compatibility:
                self.client.set_compatibility(subject_name=subject, level=compatibility)
            schema_id = self.client.register_schema(subject, Schema(schema_text(schema_name), "AVRO"))
            self._ids[key] = schema_id
            self._writers.setdefault(schema_id, parsed(schema_name))
        return self._ids[key]

    def register_text(self, subject: str, text: str) -> int:
        """Register a schema given as JSON text (evolved producer schemas, tests)."""
        return self.client.register_schema(subject, Schema(text, "AVRO"))

    def cached(self, schema_id: int) -> bool:
        """True when ``writer(schema_id)`` answers without asking the registry (found, or recently missing)."""
        if schema_id in self._writers:
            return True
        until = self._missing.get(schema_id)
        return until is not None and until > time.monotonic()

    def prefetch(self, schema_id: int) -> None:
        """Ask the registry for ``schema_id`` (with its retries) and remember the answer; never raises.
        Meant to run in a thread, so that an unknown id does not stall an event loop."""
        try:
            self.writer(schema_id)
        except Exception:  # noqa: BLE001 - decode() will report it with its reason code
            pass

    def writer(self, schema_id: int) -> dict:
        """The parsed writer schema of ``schema_id``; raises ``SchemaNotFound`` when the registry has none."""
        found = self._writers.get(schema_id)
        if found is not None:
            return found
        until = self._missing.get(schema_id)
        if until is not None and until > time.monotonic():
            raise SchemaNotFound(schema_id)
        for attempt in range(self.missing_retries + 1):
            try:
                schema = self.client.get_schema(schema_id)
                break
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404 or attempt == self.missing_retries:
                    if exc.http_status_code == 404:
                        self._missing[schema_id] = time.monotonic() + self.negative_ttl_s
                        raise SchemaNotFound(schema_id) from exc
                    raise
                time.sleep(self.missing_backoff_s * (attempt + 1))
        if schema.schema_type not in (None, "AVRO"):
            self._missing[schema_id] = time.monotonic() + self.negative_ttl_s
            raise SchemaNotFound(schema_id)
        self._writers[schema_id] = fastavro.parse_schema(json.loads(schema.schema_str))
        self._missing.pop(schema_id, None)
        return self._writers[schema_id]

