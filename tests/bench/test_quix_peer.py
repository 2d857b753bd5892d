"""The Quix Streams peer's rule, held against Herald's policy event by event: the same job, or the ratio lies.

Both see one user with no preference record, offline, on the benchmark's mix (every priority, batchable
events, duplicates by event id and by dedup_key, bursts that cross the rate limits), with the benchmark's
windows. What each writes on an event's arrival must agree: its decisions (outcome, channels, final,
release time) and the requests it sends at once (channel, kind, events).
"""
from __future__ import annotations

import random

import pytest

from agents import policy
from agents.preferences import effective
from bench.peers import quix_peer
from bench.workload import PRIORITIES, TYPES

BATCH_S, DIGEST_S = 2, 10
CONFIG = policy.PolicyConfig(batch_window_s=BATCH_S, digest_period_s=DIGEST_S)
RULE = quix_peer.Rule(batch_window_ms=BATCH_S * 1000, digest_window_ms=DIGEST_S * 1000)


class DictState:
    """What the peer's ``decide`` needs of Quix's state."""

    def __init__(self) -> None:
        self.values: dict = {}

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def set(self, key: str, value: object) -> None:
        self.values[key] = value


def events(seed: int, n: int = 400) -> list[tuple[int, dict]]:
    """(arrival ms, event) for one user: a few ms to 70 s apart, a burst of urgent ones every hundred, a tenth
    repeats."""
    rng = random.Random(seed)
    now = 1_800_000_000_000 + rng.randrange(86_400_000)
    out: list[tuple[int, dict]] = []
    for i in range(n):
        burst = i % 100 >= 85  # fifteen HIGH or CRITICAL events within a second: over the minute's limit
        now += 50 if burst else rng.choices((1, 5, 40, 300, 2_500, 20_000, 70_000), (5, 5, 5, 3, 2, 1, 1))[0]
        if out and rng.random() < 0.1:
            at, again = rng.choice(out[-20:])
            # a resent event_id comes within the dedup window, as the workload's do (one resent later would
            # be decided again by both, but Herald's test here has no clock to close its first groups)
            resend = rng.random() < 0.5 and now - at < 250_000
            event = dict(again) if resend else {**again, "event_id": f"e{seed}-{i}"}
        else:
            type_ = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
            event = {"event_id": f"e{seed}-{i}", "user_id": "u1", "type": type_,
                     "priority": (rng.choice(("HIGH", "HIGH", "CRITICAL")) if burst else
                                  rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]),
                     "title": f"title {i}", "body": f"body {i}", "data": {"entity_id": str(i)}, "occurred_at": now,
                     "dedup_key": f"{type_}:{i}" if rng.random() < 0.6 else None,
                     "batchable": rng.random() < 0.9, "channels": None, "deliver_after": None, "cancel_key": None}
        out.append((now, event))
    return out


def herald_writes(outcome: policy.Outcome) -> tuple[list, list]:
    return ([(d["outcome"], d["channels"], d["final"], d["release_at"]) for d in outcome.decisions],
            [(r["channel"], r["kind"], r["event_ids"]) for r in outcome.requests])


def peer_writes(result: dict) -> tuple[list, list]:
    out = result["out"]
    return ([(d["outcome"], d["channels"], d["final"], d["release_at"]) for d in out if "outcome" in d],
            [(r["channel"], r["kind"], r["event_ids"]) for r in out if "kind" in r])


@pytest.mark.parametrize("seed", range(6))
def test_the_peer_writes_what_herald_writes_on_each_arrival(seed):
    prefs = effective(None, "u1")
    state = None
    peer_state = DictState()
    seen = {"THROTTLED": 0, "DEDUPLICATED": 0, "BATCHED": 0, "DIGESTED": 0, "ROUTED": 0}
    for now, event in events(seed):
        herald = policy.on_event(state, event, prefs, False, now, "t:0:0", CONFIG)
        state = herald.state
        peer = quix_peer.decide(event, now, peer_state, RULE)
        assert peer_writes(peer) == herald_writes(herald), event
        for outcome, *_ in herald_writes(herald)[0]:
            seen[outcome] += 1
        held = {"batch": [], "digest": [], "throttled": []}
        for d in herald.decisions:
            if d["outcome"] == "THROTTLED":
                held["throttled"].extend(d["channels"])
            elif d["outcome"] in ("BATCHED", "DIGESTED"):
                held["batch" if d["outcome"] == "BATCHED" else "digest"].extend(
                    c for c in d["channels"] if c in ("PUSH", "EMAIL") and not any(
                        r["channel"] == c for r in herald.requests))
        assert {k: [p["channel"] for p in peer[k]] for k in held} == held
    assert all(seen.values()), seen  # the mix reached every outcome, the throttle included


def test_a_window_releases_a_request_per_channel_and_type_and_a_final_decision_per_event():
    parts = [quix_peer.part({"event_id": f"e{i}", "user_id": "u1", "type": t, "priority": "NORMAL",
                             "title": f"t{i}", "body": "b"}, c)
             for i, t in enumerate(["COMMENT", "COMMENT", "MENTION"]) for c in ("PUSH", "EMAIL")]
    out = quix_peer.released(parts, "BATCH", "BATCHED", 1_000, 3_000)
    requests = [(r["channel"], r["kind"], r["event_ids"]) for r in out if "kind" in r]
    assert requests == [("PUSH", "BATCH", ["e0", "e1"]), ("EMAIL", "BATCH", ["e0", "e1"]),
                        ("PUSH", "SINGLE", ["e2"]), ("EMAIL", "SINGLE", ["e2"])]
    finals = [(d["event_id"], d["outcome"], d["channels"], d["final"]) for d in out if "outcome" in d]
    assert finals == [(f"e{i}", "BATCHED", ["PUSH", "EMAIL"], True) for i in range(3)]
    many = [quix_peer.part({"event_id": f"e{i}", "user_id": "u1", "type": "COMMENT", "priority": "LOW",
                            "title": "t", "body": "b"}, "EMAIL") for i in range(quix_peer.MAX_BATCH + 1)]
    batches = [(r["kind"], len(r["event_ids"])) for r in quix_peer.released(many, "BATCH", "BATCHED", 0, 1) if "kind" in r]
    assert batches == [("BATCH", quix_peer.MAX_BATCH), ("SINGLE", 1)]
    # a digest is one request, whatever its size, even of one event (as agents.digest makes it)
    digests = [(r["kind"], len(r["event_ids"])) for r in quix_peer.released(many, "DIGEST", "DIGESTED", 0, 1) if "kind" in r]
    assert digests == [("DIGEST", quix_peer.MAX_BATCH + 1)]
    one = [r["kind"] for r in quix_peer.released(many[:1], "DIGEST", "DIGESTED", 0, 1) if "kind" in r]
    assert one == ["DIGEST"]
