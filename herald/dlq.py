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
