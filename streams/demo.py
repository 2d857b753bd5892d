"""The demo stream ``herald up`` runs: a realistic mix from a small team's task app.

Fifty users, four kinds of event, LOW 50% / NORMAL 35% / HIGH 10% / CRITICAL 5%, a few producer
retries (the same event_id sent twice) and, now and then, a record from a misconfigured producer
(JSON instead of Avro), so every path of the pipeline shows up on screen.
"""
from __future__ import annotations

import random
import time
import uuid

USERS = [f"demo-user-{i}" for i in range(1, 51)]
SAMPLE_USER = USERS[0]
TYPES = {
    "TASK_DEADLINE": ("Task deadline approaching", "“{entity}” is due in {n} hours"),
    "HABIT_REMINDER": ("Habit reminder", "Time for your {entity} streak (day {n})"),
    "COMMENT": ("New comment", "Someone commented on “{entity}”"),
    "PROJECT_MILESTONE": ("Milestone reached", "Project {entity} passed milestone {n}"),
}
ENTITIES = ["Quarterly report", "Morning run", "Launch plan", "Onboarding", "Budget review", "Reading"]
PRIORITIES = ["LOW"] * 50 + ["NORMAL"] * 35 + ["HIGH"] * 10 + ["CRITICAL"] * 5


def event(rng: random.Random, now_ms: int | None = None) -> dict:
    kind = rng.choice(list(TYPES))
    title, body = TYPES[kind]
    entity = rng.choice(ENTITIES)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "user_id": SAMPLE_USER if rng.random() < 0.1 else rng.choice(USERS),
        "type": kind,
        "priority": rng.choice(PRIORITIES),
        "title": title,
        "body": body.format(entity=entity, n=rng.randint(1, 30)),
        "data": {"entity_id": entity.lower().replace(" ", "-"), "action_url": f"https://app.example/{kind.lower()}"},
        "occurred_at": now_ms or int(time.time() * 1000),
        "dedup_key": None, "batchable": True, "channels": None, "deliver_after": None, "cancel_key": None,
    }


def contact(user: str, now_ms: int) -> dict:
    """The demo users' addresses: everyone has an email and a device; every fifth user has no phone, so their
    SMS is SUPPRESSED, and the last user's device token is one the provider no longer knows."""
    n = int(user.rsplit("-", 1)[1])
    token = f"unregistered-{user}" if user == USERS[-1] else f"demo-device-{user}"
    return {"user_id": user, "email": f"{user}@demo.example", "phone": None if n % 5 == 0 else f"+1555010{n:04d}",
            "push_tokens": [token], "locale": "en", "updated_at": now_ms}


def stream(seed: int = 7):
    """Endless (kind, payload) pairs: ("event", dict), ("retry", dict) or ("bad", bytes)."""
    rng = random.Random(seed)
    last = None
    while True:
        roll = rng.random()
        if last is not None and roll < 0.05:
            yield "retry", last
        elif roll < 0.07:
            yield "bad", b'{"user_id": "demo-user-2", "note": "a JSON producer that forgot the Avro serializer"}'
        else:
            last = event(rng)
            yield "event", last
