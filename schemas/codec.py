"""The Confluent wire format on fastavro: byte 0 is 0, then a 4-byte big-endian schema id, then Avro binary.

Decoding resolves the writer's schema (fetched by id, cached) to Herald's reader schema, so records
from older and newer producers both read as the reader's shape. Every way a record can fail to
decode raises ``DecodeError`` with a stable reason code from the contract, which is what the
dead-letter topic's ``herald.error.reason`` header carries.
"""
from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
from fastavro._read_common import SchemaResolutionError

from schemas.loader import parsed
from schemas.registry import Registry, SchemaNotFound

MAGIC = 0
HEADER = struct.Struct(">bI")
DEFAULT_MAX_BYTES = 256 * 1024


class DecodeError(ValueError):
    """A record that cannot be read. ``reason`` is the contract's dead-letter code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Codec:
    """Encodes records for a subject and decodes any record written with a registered Avro schema."""

    def __init__(self, registry: Registry, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.registry = registry
        self.max_bytes = max_bytes
        # (writer id, reader name) -> reader schema to pass, or None when writer == reader
        self._resolution: dict[tuple[int, str], dict | None] = {}

    def encode(self, subject: str, schema_name: str, record: dict) -> bytes:
        schema_id = self.registry.register(subject, schema_name)
        buf = io.BytesIO()
        buf.write(HEADER.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(buf, parsed(schema_name), record)
        return buf.getvalue()

    @staticmethod
    def schema_id_of(data: bytes | None) -> int | None:
        """The schema id in a wire-format header, or None when there is no such header."""
        if data is None or len(data) < HEADER.size or data[0] != MAGIC:
            return None
        return int.from_bytes(data[1:5], "big")

    def decode(self, data: bytes | None, reader: str | None) -> dict[str, Any]:
        """Decode ``data`` into the shape of the ``reader`` schema (e.g. ``"NotificationEvent"``), or of
        the writer's own schema when ``reader`` is None (for tools that print any topic)."""
        if data is None:
            raise DecodeError("TOMBSTONE", "null value (tombstone): nothing to decode")
        if len(data) > self.max_bytes:
            raise DecodeError("TOO_LARGE", f"record of {len(data)} bytes is over the limit of {self.max_bytes}")
        if len(data) < HEADER.size:
            raise DecodeError("INVALID_MAGIC_BYTE", f"record of {len(data)} bytes is shorter than the 5-byte wire-format header")
        if data[0] != MAGIC:
            hint = " (it looks like JSON: use the Avro serializer)" if data[:1] in (b"{", b"[") else ""
            raise DecodeError("INVALID_MAGIC_BYTE", f"first byte is {data[0]}, not 0: not the Confluent wire format{hint}")
        schema_id = int.from_bytes(data[1:5], "big")
        try:
            writer = self.registry.writer(schema_id)
        except SchemaNotFound:
            raise DecodeError("SCHEMA_NOT_FOUND", f"schema id {schema_id} is not in the registry") from None
        reader_schema = self._reader_for(schema_id, writer, reader) if reader else None
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader_schema)
        except SchemaResolutionError as exc:
            raise DecodeError("DECODE_ERROR", f"cannot read schema id {schema_id} as {reader}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any corrupt body is the producer's mistake, not ours
            raise DecodeError("DECODE_ERROR", f"body does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError("DECODE_ERROR", f"{len(data) - buf.tell()} bytes left over after the record (schema id {schema_id})")
        if not isinstance(record, dict):
            raise DecodeError("SCHEMA_MISMATCH", f"schema id {schema_id} is not a record schema")
        return record

    def _reader_for(self, schema_id: int, writer: dict, reader: str) -> dict | None:
        key = (schema_id, reader)
        if key not in self._resolution:
            reader_schema = parsed(reader)
            writer_name = writer.get("name") if isinstance(writer, dict) else None
            if writer_name != reader_schema["name"]:
                raise DecodeError("SCHEMA_MISMATCH", f"schema id {schema_id} is {writer_name}, not {reader_schema['name']}: "
                                  "the record was written for another topic")
            same = fastavro.schema.to_parsing_canonical_form(writer) == fastavro.schema.to_parsing_canonical_form(reader_schema)
            self._resolution[key] = None if same else reader_schema
        return self._resolution[key]
