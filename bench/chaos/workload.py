"""The steady mixed stream a chaos run produces, and what it knows it produced.

Every path of the pipeline, at a low steady rate over a small set of users (so batches, digests and rate
limits happen): all four priorities; batchable types that batch in the run's short windows; users whose
preferences put one type in a digest; explicit channels; events scheduled a few seconds ahead, some of them
withdrawn by a CANCEL; producer retries (the same record again) and repeated dedup keys; bad records (not
Avro, unknown schema, empty, misrouted...); preference and contact changes, some straight to their topics
and some through the API.

An input counts as accepted only once Kafka acknowledged it (the producer retries through a broker restart;
a record it finally gave up on is not one the pipeline owes a decision). ``accepted`` counts each valid
event_id's acknowledged records; ``bad_accepted`` the acknowledged bad ones.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter

from confluent_kafka import Producer

from bench.ingest_accounting import bad_record
from schemas.codec import Codec

TYPES = {  # type -> (title, body)
    "TASK_DEADLINE": ("Task deadline approaching", "A task is due soon"),
    "COMMENT": ("New comment", "Someone commented"),
    "HABIT_REMINDER": ("Habit reminder", "Keep the streak"),
    "PROJECT_MILESTONE": ("Milestone reached", "A project passed a milestone"),
    "SYSTEM": ("System notice", "Maintenance tonight"),
}
PRIORITIES = ["LOW"] * 35 + ["NORMAL"] * 40 + ["HIGH"] * 15 + ["CRITICAL"] * 10
CHANNEL_SETS = [None] * 6 + [["EMAIL"], ["PUSH"], ["SMS"], ["INAPP", "EMAIL"]]


def user_ids(run_id: str, n: int) -> list[str]:
    return [f"chaos-{run_id}-u{i}" for i in range(n)]


def contact(user: str, i: int, version: int) -> dict:
    """Everyone has an email and a device; every fifth user no phone (their SMS is SUPPRESSED)."""
    return {"user_id": user, "email": f"{user}@chaos.example", "phone": None if i % 5 == 0 else f"+1555{i:07d}",
            "push_tokens": [f"device-{user}-{version}"], "locale": "en", "updated_at": int(time.time() * 1000)}


def preferences(user: str, rng: random.Random) -> dict:
    """A preference record: now and then a digest (the run's short fixed period), a raised minimum priority or SMS off."""
    return {"user_id": user, "timezone": rng.choice(["UTC", "Europe/Berlin", "America/New_York"]),
            "channels": {"SMS": False} if rng.random() < 0.3 else {},
            "types": {}, "minimum_priority": rng.choice(["LOW"] * 4 + ["NORMAL"]),
            "quiet_hours": None, "dnd": [], "digest_mode": "HOURLY" if rng.random() < 0.3 else "IMMEDIATE",
            "digest_time": None, "digest_day": None, "batching": True, "batch_window_s": 3, "max_batch_size": 20,
            "max_per_hour": None, "updated_at": int(time.time() * 1000)}


class Workload(threading.Thread):
    """Produces ``rate`` inputs per second until ``stop()``; counts what Kafka acknowledged."""

    def __init__(self, run_id: str, bootstrap: str, codec: Codec, topic_of, rate: float, users: int = 60,  # noqa: ANN001
                 seed: int = 1) -> None:
        super().__init__(daemon=True, name="chaos-workload")
        self.run_id, self.codec, self.topic_of, self.rate = run_id, codec, topic_of, rate
        self.users = user_ids(run_id, users)
        self.rng = random.Random(seed)
        # a broker restart must not lose an acknowledged record nor make the producer give up on one
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 5, "message.timeout.ms": 600_000, "socket.timeout.ms": 10_000})
        self.accepted: Counter = Counter()  # event_id -> acknowledged records
        self.bad_accepted = 0
        self.failed = 0  # records the producer gave up on (not inputs)
        self.produced = 0
        self.kinds: Counter = Counter()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._recent: list[tuple[bytes, bytes, str]] = []
        self._scheduled: list[tuple[str, str]] = []  # (user, cancel_key) of scheduled events
        self._n = 0

    # -- producing ---------------------------------------------------------------------------------

    def send_contacts(self) -> None:
        topic = self.topic_of("contacts")
        for i, user in enumerate(self.users):
            self.producer.produce(topic, self.codec.encode(f"{topic}-value", "Contact", contact(user, i, 0)), user.encode())
        self.producer.flush(60)

    def _ack(self, event_id: str | None):  # noqa: ANN202
        def on_delivery(err, msg) -> None:  # noqa: ANN001
            with self._lock:
                if err is not None:
                    self.failed += 1
                elif event_id is None:
                    self.bad_accepted += 1
                else:
                    self.accepted[event_id] += 1
        return on_delivery

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, event_id: str | None | bool) -> None:
        callback = self._ack(event_id) if event_id is not False else None
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=callback)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.produced += 1

    def event(self, now_ms: int) -> dict:
        rng = self.rng
        self._n += 1
        user = rng.choice(self.users)
        type_ = rng.choice(list(TYPES))
        title, body = TYPES[type_]
        event = {"event_id": f"chaos-{self.run_id}-e{self._n}", "user_id": user, "type": type_,
                 "priority": rng.choice(PRIORITIES), "title": f"{title} #{self._n}", "body": body,
                 "data": {"entity_id": str(self._n), "action_url": f"https://app.example/e/{self._n}"},
                 "occurred_at": now_ms, "dedup_key": None, "batchable": type_ != "SYSTEM",
                 "channels": rng.choice(CHANNEL_SETS), "deliver_after": None, "cancel_key": None}
        roll = rng.random()
        if roll < 0.05:
            event["dedup_key"] = f"{user}-{type_}-{self._n // 50}"  # repeats within the run's dedup window
        elif roll < 0.12:
            key = f"reminder-{self._n}"
            event.update(deliver_after=now_ms + rng.randrange(3000, 15000), cancel_key=key, batchable=False)
            self._scheduled.append((user, key))
            self.kinds["scheduled"] += 1
        elif roll < 0.15 and self._scheduled:
            cancelled_user, key = self._scheduled.pop(rng.randrange(len(self._scheduled)))
            event.update(user_id=cancelled_user, type="CANCEL", cancel_key=key, batchable=False, channels=None)
            self.kinds["cancel"] += 1
        return event

    def step(self) -> None:
        """One input: mostly an event, sometimes a retry, a bad record, a preference or a contact change."""
        rng, now = self.rng, int(time.time() * 1000)
        events = self.topic_of("events")
        roll = rng.random()
        if roll < 0.06 and self._recent:
            key, value, event_id = rng.choice(self._recent)
            self._produce(events, value, key, event_id)
            self.kinds["retry"] += 1
        elif roll < 0.09 and self._recent:
            key, value, _ = rng.choice(self._recent)
            bad_key, bad_value = bad_record(rng, value, value[1:5], key.decode())
            self._produce(events, bad_value, bad_key, None)
            self.kinds["bad"] += 1
        elif roll < 0.11:
            topic = self.topic_of("preferences")
            user = rng.choice(self.users)
            self._produce(topic, self.codec.encode(f"{topic}-value", "Preferences", preferences(user, rng)),
                          user.encode(), False)
            self.kinds["preferences"] += 1
        elif roll < 0.12:
            topic = self.topic_of("contacts")
            i = rng.randrange(len(self.users))
            value = self.codec.encode(f"{topic}-value", "Contact", contact(self.users[i], i, self._n))
            self._produce(topic, value, self.users[i].encode(), False)
            self.kinds["contacts"] += 1
        else:
            event = self.event(now)
            key = event["user_id"].encode()
            value = self.codec.encode(f"{events}-value", "NotificationEvent", event)
            self._produce(events, value, key, event["event_id"])
            self.kinds["events"] += 1
            if len(self._recent) >= 200:
                self._recent.pop(0)
            self._recent.append((key, value, event["event_id"]))

    def run(self) -> None:
        started = time.monotonic()
        done = 0
        while not self._halt.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while done < due and not self._halt.is_set():
                self.step()
                done += 1
            self.producer.poll(0)
            time.sleep(0.02)

    def stop(self, flush_s: float = 300) -> int:
        """Stop producing; wait for Kafka's answer on what was sent. Returns records still unanswered."""
        self._halt.set()
        self.join(30)
        return self.producer.flush(flush_s)
