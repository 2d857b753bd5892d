"""Loading the `.avsc` files in `schemas/avro/` as self-contained schemas.

Each file holds one named type (`herald.<Name>.avsc`). A schema registered under a subject must be
self-contained, so a reference to another file's type (``"herald.Priority"``) is replaced by that
type's full definition at its first use, and left as a name after it, as Avro requires.
"""
from __future__ import annotations

import copy
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import fastavro

from schemas.writer import writer_for

AVRO_DIR = Path(__file__).parent / "avro"

# The top-level record schemas of the contract, by short name.
SCHEMA_NAMES = ("NotificationEvent", "DeliveryRequest", "DeliveryStatus", "Decision",
                "ReadEvent", "Preferences", "Presence", "Contact")


def _file_types() -> dict[str, dict]:
    return {p.name[: -len(".avsc")]: json.loads(p.read_text()) for p in AVRO_DIR.glob("*.avsc")}


def _expand(node: Any, types: dict[str, dict], defined: set[str]) -> Any:
    if isinstance(node, str):
        if node in types and node not in defined:
            defined.add(node)
            return _expand(copy.deepcopy(types[node]), types, defined)
        return node
    if isinstance(node, list):
        return [_expand(item, types, defined) for item in node]
    if isinstance(node, dict):
        if "name" in node and node.get("type") in ("record", "enum", "fixed"):
            defined.add(f"{node.get('namespace', 'herald')}.{node['name']}")
        out = dict(node)
        for key in ("type", "items", "values", "fields"):
            if key in out:
                out[key] = _expand(out[key], types, defined)
        return out
    return node


@lru_cache(maxsize=None)
def _load_json(name: str) -> str:
    types = _file_types()
    full = name if name.startswith("herald.") else f"herald.{name}"
    if full not in types:
        raise KeyError(f"no schema {full}.avsc in {AVRO_DIR}")
    return json.dumps(_expand(copy.deepcopy(types[full]), types, set()))


def load_schema(name: str) -> dict:
    """The self-contained schema of ``name`` (``"NotificationEvent"`` or ``"herald.NotificationEvent"``) as JSON data."""
    return json.loads(_load_json(name))


def schema_text(name: str) -> str:
    """The self-contained schema as the JSON text registered with the registry."""
    return _load_json(name)


@lru_cache(maxsize=None)
def parsed(name: str) -> dict:
    """The fastavro-parsed schema, for encoding and as the reader schema when decoding."""
    return fastavro.parse_schema(load_schema(name))


@lru_cache(maxsize=None)
def writer(name: str) -> Callable[[dict], bytes]:
    """A function writing a record of ``name`` as Avro binary: ``schemas.writer``'s own for a schema it covers
    (Herald's outputs), else fastavro's general writer."""
    own = writer_for(load_schema(name))
    if own is not None:
        return own
    schema = parsed(name)

    def general(record: dict) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()
    return general
