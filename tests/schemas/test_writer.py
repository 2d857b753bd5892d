"""``schemas.writer`` writes exactly what fastavro writes, and refuses what fastavro refuses."""
import datetime
import io

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.loader import SCHEMA_NAMES, load_schema, parsed, writer
from schemas.writer import long_bytes, text_bytes, writer_for

COVERED = [name for name in SCHEMA_NAMES if writer_for(load_schema(name)) is not None]


def fastavro_bytes(name: str, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed(name), record)
    return buf.getvalue()


def strategy(node, named: dict):
    """Valid values of a schema node (JSON data as ``load_schema`` returns it)."""
    if isinstance(node, list):
        return st.one_of(*(strategy(branch, named) for branch in node))
    if isinstance(node, str):
        if node in named:
            return strategy(named[node], named)
        return {"null": st.none(), "string": st.text(max_size=80), "boolean": st.booleans(),
                "int": st.integers(-(2 ** 31), 2 ** 31 - 1), "long": st.integers(-(2 ** 63), 2 ** 63 - 1),
                "double": st.floats(allow_nan=False), "float": st.floats(width=32, allow_nan=False)}[node]
    kind = node["type"]
    if kind == "enum":
        named[f"{node.get('namespace', 'herald')}.{node['name']}"] = node
        return st.sampled_from(node["symbols"])
    if kind == "array":
        return st.lists(strategy(node["items"], named), max_size=6)
    if kind == "map":
        return st.dictionaries(st.text(max_size=20), strategy(node["values"], named), max_size=6)
    if kind == "record":
        required = {f["name"]: strategy(f["type"], named) for f in node["fields"] if "default" not in f}
        optional = {f["name"]: strategy(f["type"], named) for f in node["fields"] if "default" in f}
        return st.fixed_dictionaries(required, optional=optional)
    return strategy(kind, named)  # a logical type over a primitive


def records(name: str):
    return strategy(load_schema(name), {})


ODD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                st.datetimes(timezones=st.just(datetime.timezone.utc)), st.sampled_from(["EMAIL", "LOW", "ROUTED"]))


def test_the_outputs_are_covered():
    """The pipeline's outputs take the direct path; a schema it does not cover still gets a writer."""
    assert {"Decision", "DeliveryRequest", "NotificationEvent"} <= set(COVERED)
    assert "Preferences" not in COVERED  # nested records
    prefs = {"user_id": "u", "updated_at": 1}
    assert writer("Preferences")(prefs) == fastavro_bytes("Preferences", prefs)
    with pytest.raises(Exception):
        writer("Preferences")({"updated_at": 1})


@pytest.mark.parametrize("name", COVERED)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_records_are_written_as_fastavro_writes_them(name, data):
    record = data.draw(records(name))
    assert writer(name)(record) == fastavro_bytes(name, record)


@pytest.mark.parametrize("name", COVERED)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_odd_field_is_written_or_refused_as_fastavro_does(name, data):
    record = dict(data.draw(records(name)))
    field = data.draw(st.sampled_from([f["name"] for f in load_schema(name)["fields"]]))
    if data.draw(st.booleans()):
        record[field] = data.draw(ODD)
    else:
        record.pop(field, None)
    try:
        expected = fastavro_bytes(name, record)
    except Exception:  # noqa: BLE001 - whatever fastavro raises, the writer must raise too
        with pytest.raises(Exception):
            writer(name)(record)
        return
    assert writer(name)(record) == expected


def test_the_direct_path_is_taken(monkeypatch):
    """A valid decision never reaches fastavro (else the writer would only be a slower fastavro)."""
    decision = {"event_id": "e", "user_id": "u", "outcome": "ROUTED", "channels": ["PUSH"], "delivery_id": "d",
                "reason": "r", "at": 1_700_000_000_000, "final": True, "release_at": None}
    write = writer_for(load_schema("Decision"))
    expected = fastavro_bytes("Decision", decision)
    monkeypatch.setattr(fastavro, "schemaless_writer", None)
    assert write(decision) == expected


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 127, 128, 2 ** 31, 1_764_990_000_000, 2 ** 63 - 1, -(2 ** 63)])
def test_long_bytes(n):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert long_bytes(n) == buf.getvalue()


@pytest.mark.parametrize("s", ["", "a", "é" * 40, "x" * 63, "x" * 64, "€" * 1000])
def test_text_bytes(s):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "string", s)
    assert text_bytes(s) == buf.getvalue()
