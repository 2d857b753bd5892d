"""The codec's framing rules. The registry round trip is covered against the real registry in integration."""
import struct

import pytest

from schemas.codec import Codec, DecodeError
from schemas.loader import parsed
from schemas.registry import Registry


class CachedOnly(Registry):
    """The real Registry with its id cache filled in, and no server behind it."""

    def __init__(self):
        super().__init__(url="http://127.0.0.1:9/unused", missing_retries=0)
        self._ids[("t-value", "NotificationEvent")] = 7
        self._writers[7] = parsed("NotificationEvent")
        self._writers[8] = parsed("Decision")


EVENT = {"event_id": "e", "user_id": "u", "type": "T", "priority": "LOW", "title": "t", "body": "b", "data": {},
         "occurred_at": 1_700_000_000_000}


@pytest.fixture
def codec():
    return Codec(CachedOnly(), max_bytes=1024)


def test_round_trip(codec):
    data = codec.encode("t-value", "NotificationEvent", EVENT)
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == 7
    assert codec.decode(data, "NotificationEvent")["user_id"] == "u"


@pytest.mark.parametrize("data, reason", [
    (None, "TOMBSTONE"),
    (b"\x00\x00", "INVALID_MAGIC_BYTE"),
    (b'{"user_id": "u"}', "INVALID_MAGIC_BYTE"),
    (b"\x01\x00\x00\x00\x07abc", "INVALID_MAGIC_BYTE"),
    (b"\x00" + b"\x00" * 2000, "TOO_LARGE"),
    (b"\x00\x00\x00\x00\x07\xff\xff\xff", "DECODE_ERROR"),
])
def test_framing_errors_have_their_reason_codes(codec, data, reason):
    with pytest.raises(DecodeError) as info:
        codec.decode(data, "NotificationEvent")
    assert info.value.reason == reason


def test_a_record_of_another_schema_is_refused_by_name(codec):
    decision = {"event_id": "e", "user_id": "u", "outcome": "ROUTED", "channels": [], "delivery_id": None,
                "reason": "r", "at": 1}
    codec.registry._ids[("d-value", "Decision")] = 8
    data = codec.encode("d-value", "Decision", decision)
    with pytest.raises(DecodeError) as info:
        codec.decode(data, "NotificationEvent")
    assert info.value.reason == "SCHEMA_MISMATCH"


def test_trailing_bytes_are_an_error(codec):
    with pytest.raises(DecodeError) as info:
        codec.decode(codec.encode("t-value", "NotificationEvent", EVENT) + b"xx", "NotificationEvent")
    assert info.value.reason == "DECODE_ERROR"


def test_the_size_limit_can_be_chosen_per_call(codec):
    big = codec.encode("t-value", "NotificationEvent", {**EVENT, "body": "x" * 1500})
    with pytest.raises(DecodeError) as info:
        codec.decode(big, "NotificationEvent")
    assert info.value.reason == "TOO_LARGE" and "limit of 1024" in info.value.message
    assert codec.decode(big, "NotificationEvent", max_bytes=4096)["body"] == "x" * 1500
    small = codec.encode("t-value", "NotificationEvent", EVENT)
    with pytest.raises(DecodeError) as info:
        codec.decode(small, "NotificationEvent", max_bytes=10)
    assert info.value.reason == "TOO_LARGE" and "limit of 10" in info.value.message


def test_a_record_decodes_into_the_writers_shape_without_a_reader(codec):
    data = codec.encode("t-value", "NotificationEvent", EVENT)
    assert codec.decode(data, None)["title"] == "t"
    assert codec.decode(data, "NotificationEvent")["title"] == "t"
    with pytest.raises(DecodeError) as info:
        codec.decode(data, "Decision")
    assert info.value.reason == "SCHEMA_MISMATCH"


@pytest.mark.parametrize("user, priority", [("u", "LOW"), ("ü-user-" + "x" * 200, "CRITICAL"), ("", "HIGH")])
def test_head_reads_the_user_and_priority_as_decode_does(codec, user, priority):
    data = codec.encode("t-value", "NotificationEvent", {**EVENT, "user_id": user, "priority": priority,
                                                         "event_id": "e" * 300, "type": "TASK_DEADLINE"})
    decoded = codec.decode(data, "NotificationEvent")
    assert codec.head(data) == (decoded["user_id"], decoded["priority"]) == (user, priority)


def test_head_answers_none_where_it_cannot_tell(codec):
    data = codec.encode("t-value", "NotificationEvent", EVENT)
    assert codec.head(data[:7]) is None  # cut short
    assert codec.head(b"\x00\x00\x00\x00\x09" + data[5:]) is None  # a schema id not cached: not asked
    assert codec.head(b"\x00\x00\x00\x00\x08" + data[5:]) is None  # another schema (Decision's fields differ)
    assert codec.head(None) is None and codec.head(b"{}") is None


def test_head_answers_once_a_schema_it_did_not_know_is_cached(codec):
    """A record read before the pipeline's decode cached its schema must not leave ``head`` blind to that
    schema for good."""
    data = b"\x00\x00\x00\x00\x09" + codec.encode("t-value", "NotificationEvent", EVENT)[5:]
    assert codec.head(data) is None
    codec.registry._writers[9] = parsed("NotificationEvent")  # what a decode of id 9 caches
    assert codec.head(data) == ("u", "LOW")
