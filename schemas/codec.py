"""The Confluent wire format on fastavro: byte 0 is 0, then a 4-byte big-endian schema id, then Avro binary.

Decoding resolves the writer's schema (fetched by id, cached) to Herald's reader schema, so records
from older and newer producers both read as the reader's shape. Every way a record can fail to
decode raises ``DecodeError`` with a stable reason code from the contract, which is what the
dead-letter topic's ``herald.error.reason`` header carries. A registry that cannot answer raises
``RegistryUnavailable`` instead, which is not a ``DecodeError``: the record is not at fault, so the caller
pauses and tries again rather than dead-lettering it.

On an event loop, ``await codec.prepare(data)`` before ``decode(data, ...)``: it resolves the record's
schema id off the loop (see ``Registry.ensure``), so ``decode`` never waits on the registry.
"""
from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
from fastavro._read_common import SchemaResolutionError

from schemas.loader import parsed, writer
from schemas.registry import Registry, RegistryUnavailable, SchemaNotFound

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
        # (writer id, reader name or None) -> (writer schema, reader schema to pass or None when the
        # reader is the writer): the whole per-record schema work of a known id in one dict look-up
        self._resolved: dict[tuple[int, str | None], tuple[dict, dict | None]] = {}
        self._heads: dict[int, list[str] | None] = {}  # writer id -> its Priority symbols (``head``); None: cannot

    def encode(self, subject: str, schema_name: str, record: dict) -> bytes:
        """``record`` in the wire format under ``subject``'s id for ``schema_name``. The first call per
        subject registers the schema (``Registry.register_all`` at start-up does it ahead of time);
        raises ``RegistryUnavailable`` when that registration cannot reach the registry."""
        return HEADER.pack(MAGIC, self.registry.register(subject, schema_name)) + writer(schema_name)(record)

    @staticmethod
    def schema_id_of(data: bytes | None) -> int | None:
        """The schema id in a wire-format header, or None when there is no such header."""
        if data is None or len(data) < HEADER.size or data[0] != MAGIC:
            return None
        return int.from_bytes(data[1:5], "big")

    async def prepare(self, data: bytes | None) -> None:
        """Resolve the schema id in ``data``'s header off the event loop, so that ``decode(data, ...)``
        answers from the cache. Returns at once for a record without a wire-format header (``decode``
        reports it) or whose id is cached; raises ``RegistryUnavailable`` when the registry cannot answer."""
        if data is not None and len(data) >= HEADER.size and data[0] == MAGIC:
            schema_id = int.from_bytes(data[1:5], "big")
            if schema_id not in self.registry._writers:
                await self.registry.ensure(schema_id)

    def decode(self, data: bytes | None, reader: str | None, max_bytes: int | None = None) -> dict[str, Any]:
        """Decode ``data`` into the shape of the ``reader`` schema (e.g. ``"NotificationEvent"``), or of
        the writer's own schema when ``reader`` is None (for tools that print any topic).

        ``max_bytes`` overrides the codec's size limit for this call. Raises ``DecodeError`` for a record
        that cannot be read, ``RegistryUnavailable`` when the registry had to be asked and could not
        answer (never after ``prepare``/``Registry.ensure`` resolved the id)."""
        if data is None:
            raise DecodeError("TOMBSTONE", "null value (tombstone): nothing to decode")
        size = len(data)
        limit = self.max_bytes if max_bytes is None else max_bytes
        if size > limit:
            raise DecodeError("TOO_LARGE", f"record of {size} bytes is over the limit of {limit}")
        if size < HEADER.size:
            raise DecodeError("INVALID_MAGIC_BYTE", f"record of {size} bytes is shorter than the 5-byte wire-format header")
        if data[0] != MAGIC:
            hint = " (it looks like JSON: use the Avro serializer)" if data[:1] in (b"{", b"[") else ""
            raise DecodeError("INVALID_MAGIC_BYTE", f"first byte is {data[0]}, not 0: not the Confluent wire format{hint}")
        schema_id = int.from_bytes(data[1:5], "big")
        resolved = self._resolved.get((schema_id, reader))
        if resolved is None:
            resolved = self._resolve(schema_id, reader)
        writer, reader_schema = resolved
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader_schema)
        except SchemaResolutionError as exc:
            raise DecodeError("DECODE_ERROR", f"cannot read schema id {schema_id} as {reader}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any corrupt body is the producer's mistake, not ours
            raise DecodeError("DECODE_ERROR", f"body does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if buf.tell() != size:
            raise DecodeError("DECODE_ERROR", f"{size - buf.tell()} bytes left over after the record (schema id {schema_id})")
        if not isinstance(record, dict):
            raise DecodeError("SCHEMA_MISMATCH", f"schema id {schema_id} is not a record schema")
        return record

    def head(self, data: bytes | None, fetch: bool = False) -> tuple[str, str] | None:
        """The ``user_id`` and ``priority`` of a ``NotificationEvent`` without decoding the rest: a few
        microseconds where ``decode`` takes tens. Only for a writer schema whose first four fields are the
        contract's (``event_id``, ``user_id``, ``type`` strings, then the ``Priority`` enum); None otherwise,
        and for bytes that do not read so. A writer schema not cached yet gives None, and is asked of the
        registry only with ``fetch`` (blocking, with the registry's retries: from a thread of its own, never
        a loop's), which raises ``RegistryUnavailable`` when the registry cannot answer. It does not
        validate: ``decode`` is still the judge of the record."""
        if data is None or len(data) < HEADER.size or data[0] != MAGIC:
            return None
        schema_id = int.from_bytes(data[1:5], "big")
        symbols = self._heads.get(schema_id, False)
        if symbols is False:
            if fetch and not self.registry.cached(schema_id):
                self.registry.prefetch(schema_id)
            writer = self.registry.known(schema_id)
            if writer is None:
                return None  # asked again for the next record: the pipeline's decode may cache it meanwhile
            symbols = self._heads[schema_id] = _priority_symbols(writer)
        if symbols is None:
            return None
        try:
            pos = _skip_string(data, HEADER.size)
            length, start = _long(data, pos)
            end = start + length
            if length < 0 or end > len(data):
                return None
            user_id = data[start:end].decode()
            index, _ = _long(data, _skip_string(data, end))
            return (user_id, symbols[index]) if 0 <= index < len(symbols) else None
        except (IndexError, UnicodeDecodeError, ValueError):
            return None

    def _resolve(self, schema_id: int, reader: str | None) -> tuple[dict, dict | None]:
        try:
            writer = self.registry.writer(schema_id)
        except SchemaNotFound as exc:
            raise DecodeError("SCHEMA_NOT_FOUND", str(exc)) from None
        if reader is None:
            resolved: tuple[dict, dict | None] = (writer, None)
        else:
            reader_schema = parsed(reader)
            writer_name = writer.get("name") if isinstance(writer, dict) else None
            if writer_name != reader_schema["name"]:
                raise DecodeError("SCHEMA_MISMATCH", f"schema id {schema_id} is {writer_name}, not {reader_schema['name']}: "
                                  "the record was written for another topic")
            same = fastavro.schema.to_parsing_canonical_form(writer) == fastavro.schema.to_parsing_canonical_form(reader_schema)
            resolved = (writer, None if same else reader_schema)
        self._resolved[(schema_id, reader)] = resolved
        return resolved


__all__ = ["Codec", "DecodeError", "RegistryUnavailable", "DEFAULT_MAX_BYTES"]


def _priority_symbols(writer: dict) -> list[str] | None:
    """The symbols of the writer schema's ``priority`` when its first four fields are the contract's."""
    fields = writer.get("fields") or []
    names = [f.get("name") for f in fields[:4]]
    if names != ["event_id", "user_id", "type", "priority"] or any(f["type"] != "string" for f in fields[:3]):
        return None
    priority = fields[3]["type"]
    if not isinstance(priority, dict) or priority.get("type") != "enum":
        return None
    return list(priority["symbols"])


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zigzag varint) at ``pos``, and the position after it."""
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip_string(data: bytes, pos: int) -> int:
    length, pos = _long(data, pos)
    if length < 0 or pos + length > len(data):
        raise ValueError("string past the end")
    return pos + length
