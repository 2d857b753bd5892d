"""Writing the pipeline's outputs: Herald's schema-made writers (``schemas.writer``) against fastavro, in one process.

    python -m bench.encode [--records 50000] [--rounds 3]

For a decision, a SINGLE delivery request and a DIGEST request as the policy makes them, prints the
microseconds per record of fastavro's ``schemaless_writer`` and of the writer ``schemas.loader.writer``
returns, alternating the two for ``--rounds`` rounds (the machine is shared: compare within a run), and
checks that both wrote the same bytes.
"""
from __future__ import annotations

import argparse
import io
import time

import fastavro

from agents import policy
from agents.preferences import effective
from schemas.loader import parsed, writer

AT = 1_764_990_000_000


def samples() -> dict[str, tuple[str, dict]]:
    """One record of each kind, made by the policy itself."""
    config = policy.PolicyConfig()
    event = {"event_id": "evt-000123456", "user_id": "user-00012345", "type": "COMMENT", "priority": "LOW",
             "title": "New comment", "body": "Someone replied to your comment.", "data": {"entity_id": "42"},
             "occurred_at": AT, "dedup_key": None, "batchable": True, "channels": None, "deliver_after": None,
             "cancel_key": None}
    prefs = effective(None, event["user_id"])
    held = policy.on_event(None, event, prefs, False, AT, "bench:0:0", config)
    due = max(g["end"] for g in held.state["groups"].values())
    digest = policy.on_tick(held.state, prefs, False, due, config)
    now = policy.on_event(None, {**event, "priority": "HIGH"}, prefs, True, AT, "bench:0:1", config)
    return {"decision": ("Decision", now.decisions[0]), "single request": ("DeliveryRequest", now.requests[0]),
            "digest request": ("DeliveryRequest", digest.requests[0])}


def per_record_us(write, record: dict, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        write(record)
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000, help="records written per measurement (default 50,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args(argv)
    for kind, (name, record) in samples().items():
        schema = parsed(name)

        def general(rec: dict, schema: dict = schema) -> bytes:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, rec)
            return buf.getvalue()
        own = writer(name)
        if own(record) != general(record):
            raise SystemExit(f"{kind}: the writers disagree")
        fast, herald = [], []
        for _ in range(args.rounds):
            fast.append(per_record_us(general, record, args.records))
            herald.append(per_record_us(own, record, args.records))
        print(f"{kind:15} fastavro {min(fast):5.2f} µs  herald {min(herald):5.2f} µs  "
              f"({min(fast) / min(herald):.2f}x; best of {args.rounds} rounds of {args.records:,})")


if __name__ == "__main__":
    main()
