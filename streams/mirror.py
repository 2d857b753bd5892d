"""A read cache in front of a Faust table that only this worker writes while it owns the partitions.

Every write still goes to the table (so to RocksDB and the changelog); reads of keys this worker has
already seen skip the table's decoding. The cache is only right while the worker owns the keys'
partitions, so the pipeline clears it at every rebalance; it is also cleared when it holds more than
``max_keys`` (crude, but it keeps memory bounded and costs one re-read per key); ``max_keys=0`` keeps
nothing (the states: a cache of many large dicts costs the garbage collector more than it saves).
A read given the key's partition goes straight to that partition's RocksDB file. ``write`` hands a
batch of changes to a ``TableBatch``.
"""
from __future__ import annotations

from typing import Any, Callable

from streams import faust_adapter

_MISSING = object()


class Mirrored:
    def __init__(self, table: Any, max_keys: int = 200_000, writer: Any = None,
                 decode: Callable[[bytes], Any] | None = None, encode_key: Callable[[Any], bytes] | None = None) -> None:
        self.table = table
        self.encode_key = encode_key  # the table's own key serializer's result, without its layers (raw keys)
        self.writer = writer  # a TableBatch, for ``write``
        self.decode = decode  # for a raw-bytes table: its values' decoder
        self.max_keys = max_keys
        self._cache: dict[str, Any] = {}

    def get(self, key: str, partition: int | None = None) -> Any:
        """The value of ``key``; given its ``partition``, read straight from that partition's RocksDB file."""
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = self.table.get(key) if partition is None else self._read(key, partition)
            if value is not None and self.decode is not None:
                value = self.decode(value)
            self._remember(key, value)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key] = value
        self._remember(key, value)

    def __delitem__(self, key: str) -> None:
        if self.get(key) is not None:
            del self.table[key]
        self._remember(key, None)

    def _read(self, key: str, partition: int) -> Any:
        """``key``'s value read straight from the RocksDB file of its partition: one get, none of the layers of
        a table read (key encoding through the registry, a containment check, sensors)."""
        key_bytes = self.encode_key(key) if self.encode_key else faust_adapter.encode_key(self.table, key)
        raw = faust_adapter.read_raw(self.table, key_bytes, partition)
        return None if raw is None else faust_adapter.decode_value(self.table, raw)

    def write(self, changes: list[tuple[str, Any, int]]) -> None:
        """Write a batch of ``(key, value or None to delete, partition)`` through the ``writer``."""
        self.writer.write(changes)
        for key, value, _ in changes:
            self._remember(key, value)

    def clear(self) -> None:
        self._cache.clear()

    def _remember(self, key: str, value: Any) -> None:
        if not self.max_keys:
            return
        if len(self._cache) >= self.max_keys:
            self._cache.clear()
        self._cache[key] = value
