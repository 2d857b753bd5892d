"""Dead letters: input that could not be processed, kept byte for byte with the reason in its headers."""
from __future__ import annotations

MAX_MESSAGE = 1_000


def headers(reason: str, message: str, stage: str, topic: str, partition: int, offset: int,
            original: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """The original record's headers followed by the contract's ``herald.error.*`` and ``herald.source.*``."""
    ours = {
        "herald.error.reason": reason,
        "herald.error.message": message[:MAX_MESSAGE],
        "herald.error.stage": stage,
        "herald.source.topic": topic,
        "herald.source.partition": str(partition),
        "herald.source.offset": str(offset),
    }
    kept = [(k, v) for k, v in (original or []) if k not in ours]
    return kept + [(k, v.encode()) for k, v in ours.items()]


def reason_of(record_headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``herald.*`` headers of a dead letter as text, for ``herald tail``."""
    return {k: v.decode(errors="replace") for k, v in (record_headers or []) if k.startswith("herald.")}


# Under the default record limit of Kafka's producers and brokers (about 1 MB), with room for the key and
# the headers: a dead letter must never fail for its size, or the record behind it would be lost with it.
MAX_VALUE_BYTES = 900_000


def fit(value: bytes | None, record_headers: list[tuple[str, bytes]],
        limit: int = MAX_VALUE_BYTES) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """A dead letter's value and headers that a producer can send: a value over ``limit`` bytes is cut to
    ``limit``, and ``herald.error.truncated`` then says how many bytes the original had."""
    if value is None or len(value) <= limit:
        return value, record_headers
    return value[:limit], record_headers + [("herald.error.truncated", str(len(value)).encode())]
