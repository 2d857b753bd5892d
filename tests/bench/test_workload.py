"""The benchmark workload's mix, duplicates, preferences and encoding, with no server behind the codec."""
from __future__ import annotations

import io
from collections import Counter

import fastavro
import pytest

from bench.workload import PRIORITIES, RECENT, TYPES, FieldwiseEncoder, generate_events, generate_preferences, user_id
from schemas.codec import Codec
from schemas.loader import parsed
from schemas.registry import Registry

N, USERS, SEED, NOW = 40_000, 4_000, 3, 1_700_000_000_000


class CachedOnly(Registry):
    """The real Registry with its id cache filled in, and no server behind it."""

    def __init__(self):
        super().__init__(url="http://127.0.0.1:9/unused", missing_retries=0)
        self._ids[("e-value", "NotificationEvent")] = 41
        self._ids[("p-value", "Preferences")] = 42
        self._writers[41] = parsed("NotificationEvent")
        self._writers[42] = parsed("Preferences")


@pytest.fixture(scope="module")
def codec():
    return Codec(CachedOnly())


@pytest.fixture(scope="module")
def generated(codec):
    tally: Counter = Counter()
    records = generate_events(codec, "e-value", N, USERS, SEED, now_ms=NOW, tally=tally)
    events = [codec.decode(value, "NotificationEvent") for _, value in records]
    return records, events, tally


def test_count_wire_format_and_keys(generated):
    records, events, _ = generated
    assert len(records) == N
    assert all(value[:5] == b"\x00\x00\x00\x00\x29" for _, value in records)  # magic byte, schema id 41
    assert all(key.decode() == event["user_id"] for (key, _), event in zip(records, events))
    assert {event["user_id"] for event in events} <= {user_id(i) for i in range(USERS)}
    assert len({event["user_id"] for event in events}) > USERS * 0.95


def test_priority_and_type_mix_within_tolerance(generated):
    _, events, tally = generated
    priorities = Counter(event["priority"] for event in events)
    types = Counter(event["type"] for event in events)
    for name, share in PRIORITIES:
        assert abs(priorities[name] / N - share) < 0.012, (name, priorities[name] / N)
        assert tally[f"priority:{name}"] == priorities[name]
    for name, share in TYPES:
        assert abs(types[name] / N - share) < 0.012, (name, types[name] / N)
        assert tally[f"type:{name}"] == types[name]
    assert "CANCEL" not in types


def test_about_ten_percent_duplicates_each_soon_after_its_original(generated):
    records, events, tally = generated
    first_id: dict[str, int] = {}
    first_key: dict[tuple[str, str], int] = {}
    resent = repeated = 0
    for i, ((_, value), event) in enumerate(zip(records, events)):
        if event["event_id"] in first_id:
            j = first_id[event["event_id"]]
            assert records[j][1] == value, "a re-sent event is the very same bytes"
            assert i - j <= RECENT / 0.85  # one of the last RECENT originals (90% of the records)
            resent += 1
            continue
        first_id[event["event_id"]] = i
        key = (event["user_id"], event["dedup_key"])
        if event["dedup_key"] is not None and key in first_key:
            assert i - first_key[key] <= RECENT / 0.85
            repeated += 1
            continue
        if event["dedup_key"] is not None:
            first_key[key] = i
    assert 0.09 < (resent + repeated) / N < 0.11
    assert abs(resent - repeated) < 0.01 * N
    assert (tally["resent_event_id"], tally["repeated_dedup_key"]) == (resent, repeated)
    assert tally["duplicates"] == resent + repeated == N - tally["originals"]


def test_same_seed_same_workload_other_seed_another(codec):
    one = generate_events(codec, "e-value", 2_000, 200, 9, now_ms=NOW)
    assert one == generate_events(codec, "e-value", 2_000, 200, 9, now_ms=NOW)
    assert one != generate_events(codec, "e-value", 2_000, 200, 10, now_ms=NOW)


def test_no_duplicates_when_asked_for_none(codec):
    tally: Counter = Counter()
    records = generate_events(codec, "e-value", 5_000, 500, 1, now_ms=NOW, duplicate_share=0.0, tally=tally)
    assert tally["duplicates"] == 0
    assert len({codec.decode(v, "NotificationEvent")["event_id"] for _, v in records}) == 5_000


def _fastavro(record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed("NotificationEvent"), record)
    return buf.getvalue()


def test_fieldwise_encoding_is_the_same_bytes_as_fastavro(generated):
    _, events, _ = generated
    encoder = FieldwiseEncoder("NotificationEvent")
    odd = {"event_id": "é" * 70, "user_id": "u", "type": "T", "priority": "CRITICAL", "title": "", "body": "b" * 300,
           "data": {}, "occurred_at": -1, "dedup_key": "k", "batchable": False, "channels": ["EMAIL", "SMS"],
           "deliver_after": 2**40, "cancel_key": "c"}
    for record in [*events[:500], odd, {**odd, "data": {"a": "1", "b": "2"}, "channels": []}]:
        record = {**record, "occurred_at": _millis(record["occurred_at"])}
        assert encoder.encode(record) == _fastavro(record)
    shape = encoder.shape({k: v for k, v in odd.items() if k not in ("event_id", "occurred_at")})
    assert shape("e1", 123) == _fastavro({**odd, "event_id": "e1", "occurred_at": 123})
    with pytest.raises(TypeError):
        shape("e1")


def _millis(value) -> int:
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


def test_preferences_for_a_fifth_of_the_users(codec):
    records = generate_preferences(codec, "p-value", USERS, 0.2, SEED, now_ms=NOW)
    assert len(records) == USERS // 5
    prefs = [codec.decode(value, "Preferences") for _, value in records]
    assert len({p["user_id"] for p in prefs}) == len(prefs)
    assert all(key.decode() == p["user_id"] for (key, _), p in zip(records, prefs))
    assert all(p["user_id"] in {user_id(i) for i in range(USERS)} for p in prefs[:50])
    assert 0.2 < sum(p["quiet_hours"] is not None for p in prefs) / len(prefs) < 0.4
    assert records == generate_preferences(codec, "p-value", USERS, 0.2, SEED, now_ms=NOW)
