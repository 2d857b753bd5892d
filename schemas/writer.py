"""Avro binary for one record schema, by a function made from that schema: what fastavro writes, in fewer steps.

fastavro's ``schemaless_writer`` walks the schema for every record it writes: for each field it dispatches
on the field's type by name and writes through a buffer object. The pipeline writes two or three outputs
per event (a decision and its delivery requests), so that walk is a large share of its work. ``writer_for``
does the walk once and returns a function that writes a record of the schema in plain Python: each field
read, checked and encoded in the schema's order, the pieces joined once.

It covers the types Herald's outputs are made of: a top-level record whose fields are ``string``,
``long``/``int`` (any logical type over them, written as the number), ``boolean``, an enum, an array of
strings or enum symbols, a map of strings, or a union of ``null`` with one of those. For any other schema
``writer_for`` returns None and the caller uses fastavro.

A record the function cannot write exactly as a valid record of its schema (a field missing with no
default, a value of the wrong type, a symbol the enum lacks, a number outside 64 bits) is handed to
fastavro, which writes it if it can (say, a ``datetime`` for a ``timestamp-millis``) and otherwise raises
its own error. So what the function returns is always the bytes fastavro would write, and what fastavro
refuses is refused here too (``tests/schemas/test_writer.py`` compares the two on generated records).
"""
from __future__ import annotations

import io
from typing import Any, Callable

import fastavro

Writer = Callable[[dict], bytes]

_SMALL = [bytes([n]) for n in range(128)]  # the varint of each zig-zagged value below 128
_MIN_LONG, _MAX_LONG = -(1 << 63), (1 << 63) - 1
# Varints of larger values met lately: most are times (an output's ``at``, ``created_at``, ``release_at``),
# shared by the records of one event, of one window and of a batch read within the same millisecond.
_LARGE: dict[int, bytes] = {}
_LARGE_MAX = 4_096


class _Unwritable(Exception):
    """The record needs fastavro's general path (which writes it or raises)."""


def long_bytes(n: int) -> bytes:
    """Avro's ``long``: zig-zag, then a little-endian base-128 varint. Raises ``_Unwritable`` for a value
    that is not an int (a bool is one, as in fastavro) or lies outside 64 bits."""
    if n.__class__ is not int and not isinstance(n, int):
        raise _Unwritable
    if not _MIN_LONG <= n <= _MAX_LONG:
        raise _Unwritable
    z = (n << 1) ^ (n >> 63)
    if z < 128:
        return _SMALL[z]
    found = _LARGE.get(z)
    if found is not None:
        return found
    key, out = z, bytearray()
    while z > 127:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    if len(_LARGE) >= _LARGE_MAX:
        _LARGE.clear()
    found = _LARGE[key] = bytes(out)
    return found


def text_bytes(s: str) -> bytes:
    """Avro's ``string``: the UTF-8 bytes after their length. Raises ``_Unwritable`` for a value that is not a str."""
    if s.__class__ is not str and not isinstance(s, str):
        raise _Unwritable
    b = s.encode()
    n = len(b)
    return (_SMALL[n << 1] if n < 64 else long_bytes(n)) + b


def _unwritable(*_: Any) -> bytes:
    raise _Unwritable


class _Compiler:
    """Turns a record schema into the source of one function, ``write(record) -> bytes``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {"_long": long_bytes, "_text": text_bytes, "_bad": _unwritable}
        self.named: dict[str, Any] = {}  # full name -> the schema of a named type defined so far

    def name(self, node: dict, namespace: str) -> str:
        name = node["name"]
        return name if "." in name else f"{node.get('namespace', namespace)}.{name}"

    def resolve(self, node: Any, namespace: str) -> Any:
        if isinstance(node, str) and node not in _PRIMITIVES:
            full = node if "." in node else f"{namespace}.{node}"
            if full not in self.named:
                raise _Unsupported(node)
            return self.named[full]
        if isinstance(node, dict) and node.get("type") == "enum":
            self.named[self.name(node, namespace)] = node
        return node

    def enum_table(self, node: dict) -> str:
        table = f"_enum{len(self.consts)}"
        self.consts[table] = {symbol: long_bytes(i) for i, symbol in enumerate(node["symbols"])}
        return table

    def value(self, node: Any, expr: str, namespace: str, indent: str) -> None:
        """Lines appending the encoding of ``expr`` (a local name) as ``node`` to ``a``."""
        node = self.resolve(node, namespace)
        if isinstance(node, list):
            return self.union(node, expr, namespace, indent)
        kind = node if isinstance(node, str) else node["type"]
        if isinstance(node, dict) and kind not in ("enum", "array", "map", "record"):
            return self.value(kind, expr, namespace, indent)  # {"type": "long", "logicalType": ...} or nested
        if kind == "string":
            self.lines.append(f"{indent}a(_text({expr}))")
        elif kind in ("long", "int"):
            self.lines.append(f"{indent}a(_long({expr}))")
        elif kind == "boolean":
            self.lines.append(f"{indent}a(b'\\x01' if {expr} is True else b'\\x00' if {expr} is False else _bad())")
        elif kind == "enum":
            table = self.enum_table(node)
            self.lines.append(f"{indent}a({table}[{expr}] if {expr}.__class__ is str else _bad())")
        elif kind == "array":
            item = f"i{len(self.lines)}"
            self.lines.append(f"{indent}if {expr}.__class__ is not list and not isinstance({expr}, (list, tuple)): _bad()")
            self.lines.append(f"{indent}if {expr}:")
            self.lines.append(f"{indent}    a(_long(len({expr})))")
            self.lines.append(f"{indent}    for {item} in {expr}:")
            self.scalar(node["items"], item, namespace, indent + "        ")
            self.lines.append(f"{indent}a(b'\\x00')")
        elif kind == "map":
            key, item = f"k{len(self.lines)}", f"v{len(self.lines)}"
            self.lines.append(f"{indent}if not isinstance({expr}, dict): _bad()")
            self.lines.append(f"{indent}if {expr}:")
            self.lines.append(f"{indent}    a(_long(len({expr})))")
            self.lines.append(f"{indent}    for {key}, {item} in {expr}.items():")
            self.lines.append(f"{indent}        a(_text({key}))")
            self.scalar(node["values"], item, namespace, indent + "        ")
            self.lines.append(f"{indent}a(b'\\x00')")
        else:
            raise _Unsupported(kind)

    def scalar(self, node: Any, expr: str, namespace: str, indent: str) -> None:
        """An array's item or a map's value: a string or an enum symbol only."""
        node = self.resolve(node, namespace)
        kind = node if isinstance(node, str) else node["type"] if isinstance(node, dict) else "union"
        if kind not in ("string", "enum"):
            raise _Unsupported(kind)
        self.value(node, expr, namespace, indent)

    def union(self, branches: list, expr: str, namespace: str, indent: str) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise _Unsupported("union")
        null = branches.index("null")
        other = branches[1 - null]
        self.lines.append(f"{indent}if {expr} is None:")
        self.lines.append(f"{indent}    a({long_bytes(null)!r})")
        self.lines.append(f"{indent}else:")
        base = other["type"] if isinstance(other, dict) else other
        if base in ("long", "int"):  # fastavro matches a bool to no number branch of a union (a number field takes it)
            self.lines.append(f"{indent}    if {expr}.__class__ is bool: _bad()")
        self.lines.append(f"{indent}    a({long_bytes(1 - null)!r})")
        self.value(other, expr, namespace, indent + "    ")

    def record(self, schema: dict) -> str:
        if schema.get("type") != "record":
            raise _Unsupported(schema.get("type"))
        namespace = schema.get("namespace", "")
        self.lines = ["def write(r):", "    p = []", "    a = p.append", "    g = r.get"]
        for i, field in enumerate(schema["fields"]):
            local = f"f{i}"
            if "default" in field:
                self.consts[f"_d{i}"] = field["default"]
                self.lines.append(f"    {local} = g({field['name']!r}, _d{i})")
            else:
                self.lines.append(f"    {local} = r[{field['name']!r}]")
            self.value(field["type"], local, namespace, "    ")
        self.lines.append("    return b''.join(p)")
        return "\n".join(self.lines)


_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))


class _Unsupported(Exception):
    """A schema with a type ``writer_for`` does not cover."""


def writer_for(schema: dict) -> Writer | None:
    """A function writing a record of ``schema`` (self-contained JSON data, not fastavro's parsed form) as
    Avro binary, the bytes fastavro's ``schemaless_writer`` writes; None when the schema has a type not
    covered (see the module's doc). Records it cannot write directly go to fastavro, which may raise."""
    compiler = _Compiler()
    try:
        source = compiler.record(schema)
    except _Unsupported:
        return None
    scope = dict(compiler.consts)
    exec(source, scope)  # noqa: S102 - the source is made above from the schema's field names (repr'd) alone
    direct = scope["write"]
    parsed = fastavro.parse_schema(schema)

    def write(record: dict) -> bytes:
        try:
            return direct(record)
        except (_Unwritable, KeyError, AttributeError, TypeError):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, record)
            return buf.getvalue()

    write.source = source  # type: ignore[attr-defined]
    return write
