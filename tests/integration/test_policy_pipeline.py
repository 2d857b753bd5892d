"""The stateful pipeline, end to end: a real worker subprocess against the real broker and registry.

Each behaviour of ``agents/policy.py`` is driven here through Kafka only: events, preferences and presence
records in (Herald's codec, Kafka's own murmur2 partitioner, or the stock confluent-kafka serializer), and
``herald.Decision`` / ``herald.DeliveryRequest`` records read back from the decisions and delivery topics.

How the module keeps to a few minutes:
- one Pipeline (worker only) is shared by every test whose users cannot interfere (each test has its own
  users); the rate-limit test has a dedicated Pipeline with ``HERALD_RATE_PER_MINUTE=3``;
- a background reader assigns itself every partition of the decisions and delivery topics from the start
  (no consumer group to join) and keeps every record, decoded, with its Kafka timestamp (when the worker
  produced it); tests poll it with deadlines;
- quiet hours and rate limits can only end on a minute boundary, so both scenarios are *started* by an
  autouse module fixture and *checked* by their tests after the quick ones have run: the two waits for the
  next minute overlap each other and the other tests;
- the tests that disturb the shared worker (kill -9, a second worker joining and leaving) run last.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.preferences import defaults
from agents.validate import to_ms
from herald.kafka import home_partition
from schemas.codec import Codec
from schemas.registry import Registry
from tests.conftest import free_port
from tests.integration.harness import Pipeline
from tests.integration.test_end_to_end import standard_producer

pytestmark = pytest.mark.integration

CHANNELS = ("EMAIL", "PUSH", "SMS", "INAPP", "WEBSOCKET")
PROBE_TYPE = "HERALD_TEST_PROBE"  # disabled in every preferences record this module publishes
QUIET_ZONE = "Asia/Kolkata"  # +05:30: a zone whose minutes are not UTC's hours


def now_ms() -> int:
    return int(time.time() * 1000)


def sleep_until(at_ms: int) -> None:
    delay = (at_ms - now_ms()) / 1000
    if delay > 0:
        time.sleep(delay)


def align(period_ms: int, within_ms: int) -> int:
    """Sleep until at most ``within_ms`` past the start of an epoch-aligned period; return that start."""
    phase = now_ms() % period_ms
    if phase > within_ms:
        time.sleep((period_ms - phase + 30) / 1000)
    return now_ms() // period_ms * period_ms


def ev(user: str, tag: str, **over) -> dict:
    """A valid NotificationEvent; the id names the user and the tag, so a failure message is readable."""
    return {"event_id": f"{user}-{tag}-{uuid.uuid4().hex[:6]}", "user_id": user, "type": "TASK_DEADLINE",
            "priority": "NORMAL", "title": f"{tag} title", "body": "body", "data": {"entity_id": tag},
            "occurred_at": now_ms(), "dedup_key": None, "batchable": True, "channels": None,
            "deliver_after": None, "cancel_key": None, **over}


def _plain(value: dict) -> dict:
    for name in ("at", "release_at", "created_at"):
        if value.get(name) is not None:
            value[name] = to_ms(value[name])
    return value


def _distinct(records: list[dict]) -> list[dict]:
    """Records with the same content (apart from where and when they were written) once each."""
    seen, out = set(), []
    for r in records:
        key = repr(sorted((k, v) for k, v in r.items() if k not in ("_ts", "_where")))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


class Outputs(threading.Thread):
    """Every record of the decisions and delivery topics, decoded, with ``_ts`` (its Kafka timestamp, i.e.
    when the worker produced it), read from the beginning by a consumer that assigns itself all partitions."""

    def __init__(self, settings, codec: Codec) -> None:
        super().__init__(daemon=True)
        self.codec = codec
        self.schemas = {settings.topic("decisions"): "Decision",
                        **{settings.topic(f"delivery.{c.lower()}"): "DeliveryRequest" for c in CHANNELS}}
        self.decisions: list[dict] = []
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"obs-{uuid.uuid4()}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                              for t in self.schemas for p in range(settings.partitions)])
        self.start()

    def run(self) -> None:
        while not self._halt.is_set():
            for msg in self.consumer.consume(1000, 0.1):
                if msg.error():
                    continue
                try:
                    value = _plain(self.codec.decode(msg.value(), self.schemas[msg.topic()]))
                except Exception as exc:  # noqa: BLE001 - reported by the tests, never silently lost
                    self.errors.append(f"{msg.topic()}@{msg.offset()}: {exc}")
                    continue
                value["_ts"] = msg.timestamp()[1]
                value["_where"] = (msg.topic(), msg.partition(), msg.offset())
                (self.decisions if self.schemas[msg.topic()] == "Decision" else self.requests).append(value)
        self.consumer.close()

    def close(self) -> None:
        self._halt.set()
        self.join(10)

    # -- queries -----------------------------------------------------------------------------------

    def of(self, user: str, event_id: str | None = None, final: bool | None = None) -> list[dict]:
        return [d for d in list(self.decisions) if d["user_id"] == user
                and (event_id is None or d["event_id"] == event_id) and (final is None or d["final"] == final)]

    def finals(self, user: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for d in _distinct(self.of(user, final=True)):
            out.setdefault(d["event_id"], []).append(d)
        return out

    def sent(self, user: str, channel: str | None = None, kind: str | None = None,
             event_id: str | None = None) -> list[dict]:
        """The requests, a record written again identically (at least once, e.g. after a crash) counted once:
        the sinks' ledgers drop such a copy by its ``delivery_id``."""
        return _distinct([r for r in list(self.requests) if r["user_id"] == user
                          and (channel is None or r["channel"] == channel) and (kind is None or r["kind"] == kind)
                          and (event_id is None or event_id in r["event_ids"])])

    def dump(self, *users: str) -> str:
        lines = []
        for user in users:
            for d in self.of(user):
                lines.append(f"  {d['_ts']} decision {d['event_id']} {d['outcome']} final={d['final']} "
                             f"release_at={d['release_at']} channels={d['channels']} id={d['delivery_id']} ({d['reason']})")
            for r in self.sent(user):
                lines.append(f"  {r['_ts']} request {r['channel']} {r['kind']} {r['event_ids']} id={r['delivery_id']}")
        return "\n".join(sorted(lines)) or "  (nothing)"


class Stage:
    """One Pipeline plus a producer for its input topics and a reader of its outputs."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.settings = s = pipeline.settings
        self.unique = s.topic_prefix.rstrip(".")
        self.codec = Codec(Registry(s.schema_registry_url))
        self.producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "partitioner": "murmur2_random",
                                  "enable.idempotence": True, "linger.ms": 2})
        self.out = Outputs(s, self.codec)
        self._probes = 0

    def close(self) -> None:
        self.out.close()

    def _produce(self, name: str, key: str, schema: str, record: dict | None) -> None:
        topic = self.settings.topic(name)
        value = None if record is None else self.codec.encode(f"{topic}-value", schema, record)
        self.producer.produce(topic, key=key.encode(), value=value)

    def send(self, *events: dict) -> None:
        for e in events:
            self._produce("events", e["user_id"], "NotificationEvent", e)
        assert self.producer.flush(10) == 0

    def presence(self, user: str, online: bool, expires_in_s: float = 300) -> None:
        now = now_ms()
        self._produce("presence", user, "Presence", {"user_id": user, "online": online, "connection_id": f"c-{user}",
                                                     "at": now, "expires_at": now + int(expires_in_s * 1000)})
        assert self.producer.flush(10) == 0

    def preferences(self, user: str, prefs: dict | None, timeout: float = 30) -> None:
        """Publish a preferences record (None: a tombstone) and return once the worker applies it.

        Shown by behaviour: probe events of ``PROBE_TYPE`` (disabled in every record published here,
        enabled by default) go in until one is treated as the new record says. The probes are scheduled an
        hour ahead, so none ever reaches a delivery topic, and those held are withdrawn with a CANCEL."""
        record = None
        if prefs is not None:
            record = {**defaults(user), **prefs, "types": {**prefs.get("types", {}), PROBE_TYPE: False},
                      "updated_at": now_ms()}
        self._produce("preferences", user, "Preferences", record)
        assert self.producer.flush(10) == 0
        expected = "SUPPRESSED_PREFERENCE" if prefs is not None else "SCHEDULED"
        deadline = time.monotonic() + timeout
        held = False
        while True:
            self._probes += 1
            probe = ev(user, f"probe{self._probes}", type=PROBE_TYPE, priority="HIGH", channels=["INAPP"],
                       deliver_after=now_ms() + 3_600_000, cancel_key="herald-test-probe")
            self.send(probe)
            first = wait_for(lambda: self.out.of(user, probe["event_id"]), 20, f"a decision for probe {probe['event_id']}",
                             self.out, user)[0]
            held = held or first["outcome"] == "SCHEDULED"
            if first["outcome"] == expected:
                break
            assert time.monotonic() < deadline, f"preferences of {user} not applied in {timeout}s:\n{self.out.dump(user)}"
            time.sleep(0.2)
        if held:
            cancel = ev(user, "probe-cancel", type="CANCEL", cancel_key="herald-test-probe")
            self.send(cancel)
            wait_for(lambda: self.out.of(user, cancel["event_id"], final=True), 20, "the probes' CANCEL", self.out, user)

    def await_online(self, user: str, online: bool, timeout: float = 30) -> None:
        """Send NORMAL probes until one is routed as the user's presence says (online: final ROUTED on
        WEBSOCKET now; offline: its push and email parts wait for a batch)."""
        deadline = time.monotonic() + timeout
        while True:
            self._probes += 1
            probe = ev(user, f"presence-probe{self._probes}", type="COMMENT")
            self.send(probe)
            first = wait_for(lambda: self.out.of(user, probe["event_id"]), 20, "a presence probe's decision",
                             self.out, user)[0]
            if ("WEBSOCKET" in first["channels"]) == online:
                return
            assert time.monotonic() < deadline, f"presence of {user} not applied:\n{self.out.dump(user)}"
            time.sleep(0.2)


def wait_for(check, timeout: float, what: str, out: Outputs | None = None, *users: str, more=None):
    """Poll ``check`` until it returns something truthy, and return that; fail with the users' records
    (and ``more()``, some further evidence)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{out.dump(*users)}" if out is not None else ""
            errors = f"\nundecodable: {out.errors}" if out is not None and out.errors else ""
            extra = f"\n{more()}" if more is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{extra}{detail}{errors}")
        time.sleep(0.1)


def events_progress(settings) -> str:
    """The pipeline group's committed offset and the high watermark of each events partition."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False})
    try:
        tps = [TopicPartition(settings.topic("events"), p) for p in range(settings.partitions)]
        rows = [f"partition {tp.partition}: committed {tp.offset}, high watermark "
                f"{consumer.get_watermark_offsets(tp, timeout=10)[1]}" for tp in consumer.committed(tps, timeout=10)]
        return "events consumed by the pipeline group:\n  " + "\n  ".join(rows)
    finally:
        consumer.close()


def settle(seconds: float = 2.0) -> None:
    """Anything extra (a duplicate, a late delivery) would arrive now."""
    time.sleep(seconds)


def only_final(out: Outputs, user: str, event: dict) -> dict:
    finals = out.finals(user).get(event["event_id"], [])
    assert len(finals) == 1, f"{event['event_id']}: {len(finals)} final decisions, not exactly 1:\n{out.dump(user)}"
    return finals[0]


def new_pipeline(tmp_path_factory, name: str, **env: str) -> Pipeline:
    p = Pipeline(f"{name}{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp(f"{name}-logs"), free_port())
    p.env.update(env)
    return p.prepare()


@pytest.fixture(scope="module")
def herald(stack, tmp_path_factory):
    p = new_pipeline(tmp_path_factory, "pol")
    try:
        p.start("worker")
        stage = Stage(p)
        yield stage
        stage.close()
    finally:
        p.stop()


@pytest.fixture(scope="module")
def throttled(stack, tmp_path_factory):
    # also the presence TTL's pipeline: no test here needs a user online for long
    # and the release chunk's: 3 users released a batch, so a digest period of many users takes several rounds
    p = new_pipeline(tmp_path_factory, "rate", HERALD_RATE_PER_MINUTE="3", HERALD_PRESENCE_TTL_S="15",
                     HERALD_RELEASE_CHUNK="3")
    try:
        p.start("worker")
        stage = Stage(p)
        yield stage
        stage.close()
    finally:
        p.stop()


@pytest.fixture(scope="module", autouse=True)
def minute_bound(herald, throttled):
    """Start the two scenarios that end on a minute boundary; their tests check them later.

    Quiet hours: a user in Asia/Kolkata whose quiet hours run from the previous local minute to a minute
    boundary 12-72 s ahead; one HIGH and one NORMAL event arrive inside them.
    Rate limit: 5 HIGH events for one offline user, on the worker limited to 3 sends per channel per minute,
    sent early enough in a minute that all five are decided in that minute."""
    quiet_user = f"{herald.unique}-quiet"
    tz = ZoneInfo(QUIET_ZONE)
    now = now_ms()
    end = (now // 60_000 + 1) * 60_000
    if end - now < 12_000:  # time to apply the preferences and send the events inside the window
        end += 60_000
    local_now = datetime.fromtimestamp(now / 1000, tz).replace(second=0, microsecond=0)
    window = {"start": f"{local_now - timedelta(minutes=1):%H:%M}",
              "end": f"{datetime.fromtimestamp(end / 1000, tz):%H:%M}"}
    herald.preferences(quiet_user, {"timezone": QUIET_ZONE, "quiet_hours": window})
    quiet_events = [ev(quiet_user, "q-high", priority="HIGH"), ev(quiet_user, "q-normal", type="COMMENT")]
    herald.send(*quiet_events)
    quiet_sent = now_ms()

    # the rate-limited worker is consuming (a decision comes back) before the clock-sensitive part starts
    warm = ev(f"{throttled.unique}-warmup", "w", channels=["INAPP"])
    throttled.send(warm)
    wait_for(lambda: throttled.out.of(warm["user_id"], final=True), 60, "the rate-limited worker to consume")
    if now_ms() % 60_000 > 45_000:
        sleep_until((now_ms() // 60_000 + 1) * 60_000 + 500)
    rate_user = f"{throttled.unique}-rate"
    rate_events = [ev(rate_user, f"r{n}", priority="HIGH", occurred_at=now_ms() + n) for n in range(5)]
    rate_sent = now_ms()
    throttled.send(*rate_events)
    return {"quiet": (quiet_user, window, end, quiet_events, quiet_sent),
            "rate": (rate_user, rate_events, rate_sent)}


# -- 1. dedup --------------------------------------------------------------------------------------

def test_the_same_event_id_or_dedup_key_twice_is_one_notification(herald):
    """A producer retry (same event_id) and a second event with the same dedup_key in the window: each pair
    gives one notification and one DEDUPLICATED final. Sent with the stock confluent-kafka producer, whose
    partitioner is not Kafka's, so the worker first moves each record to the user's home partition."""
    out, user = herald.out, f"{herald.unique}-dedup"
    s = herald.settings
    send, producer = standard_producer(s.kafka_bootstrap, s.schema_registry_url, s.topic("events"))
    retried = ev(user, "retried")  # NORMAL, offline: in-app now, push and email in a batch
    first = ev(user, "k1", priority="HIGH", dedup_key="same-thing")
    second = ev(user, "k2", priority="HIGH", dedup_key="same-thing")
    for e in (retried, retried, first, second):
        send(e)
    assert producer.flush(10) == 0

    wait_for(lambda: len(out.finals(user)) == 3 and len(out.finals(user).get(retried["event_id"], [])) == 2,
             30, "finals for every input", out, user)
    settle()
    finals = out.finals(user)
    assert sorted(d["outcome"] for d in finals[retried["event_id"]]) == ["BATCHED", "DEDUPLICATED"], out.dump(user)
    dup = next(d for d in finals[retried["event_id"]] if d["outcome"] == "DEDUPLICATED")
    assert "same event_id" in dup["reason"]
    assert [d["outcome"] for d in finals[first["event_id"]]] == ["ROUTED"]
    assert [d["outcome"] for d in finals[second["event_id"]]] == ["DEDUPLICATED"]
    assert first["event_id"] in finals[second["event_id"]][0]["reason"]
    # one notification per pair: each channel carries the first copy once, the duplicate never
    for channel in ("INAPP", "PUSH", "EMAIL"):
        assert len(out.sent(user, channel, event_id=retried["event_id"])) == 1, out.dump(user)
    for channel in ("INAPP", "PUSH", "SMS", "EMAIL"):
        assert len(out.sent(user, channel, event_id=first["event_id"])) == 1, out.dump(user)
    assert out.sent(user, event_id=second["event_id"]) == []


def test_a_record_moved_home_twice_is_decided_once(herald):
    """A record the worker moved from a wrong partition is moved again when a crash made it read the
    original twice: both copies carry ``herald.moved.from`` with the original's place, and the second is
    neither decided nor delivered (regression: the fault matrix saw a second, DEDUPLICATED final)."""
    out, user = herald.out, f"{herald.unique}-moved"
    s = herald.settings
    home = home_partition(user.encode(), s.partitions)
    wrong = (home + 1) % s.partitions
    moved, plain = ev(user, "moved", priority="HIGH"), ev(user, "plain", priority="HIGH")
    topic = s.topic("events")
    value = herald.codec.encode(f"{topic}-value", "NotificationEvent", moved)
    for _ in range(2):  # the copy a first run wrote, and the one a second run wrote after the crash
        herald.producer.produce(topic, key=user.encode(), value=value, partition=home,
                                headers=[("herald.moved.from", f"{wrong}:41".encode())])
    herald.producer.produce(topic, key=user.encode(), value=value, partition=home,  # moved from elsewhere: a retry
                            headers=[("herald.moved.from", f"{wrong}:42".encode())])
    assert herald.producer.flush(10) == 0
    herald.send(plain)
    wait_for(lambda: plain["event_id"] in out.finals(user) and len(out.finals(user).get(moved["event_id"], [])) >= 2,
             30, "the moved event's and the plain event's finals", out, user)
    settle()
    finals = out.finals(user)
    assert sorted(d["outcome"] for d in finals[moved["event_id"]]) == ["DEDUPLICATED", "ROUTED"], out.dump(user)
    for channel in ("INAPP", "PUSH", "SMS", "EMAIL"):
        assert len(out.sent(user, channel, event_id=moved["event_id"])) == 1, out.dump(user)


# -- 2. preferences --------------------------------------------------------------------------------

def test_preferences_suppress_and_a_tombstone_resets_them(herald):
    out, user = herald.out, f"{herald.unique}-prefs"
    herald.preferences(user, {"types": {"COMMENT": False}, "minimum_priority": "HIGH", "channels": {"SMS": False}})
    off_type = ev(user, "off-type", type="COMMENT", priority="HIGH")
    too_low = ev(user, "too-low", priority="NORMAL")
    lowest = ev(user, "lowest", priority="LOW")
    critical = ev(user, "critical", type="COMMENT", priority="CRITICAL")
    high = ev(user, "high", priority="HIGH")
    herald.send(off_type, too_low, lowest, critical, high)
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in (off_type, too_low, lowest, critical, high))
             and len(out.sent(user, event_id=critical["event_id"])) >= 4 and len(out.sent(user, event_id=high["event_id"])) >= 3,
             30, "finals and deliveries", out, user)
    settle(1)

    for e in (off_type, too_low, lowest):
        assert only_final(out, user, e)["outcome"] == "SUPPRESSED_PREFERENCE", out.dump(user)
    assert "COMMENT" in only_final(out, user, off_type)["reason"]
    assert "minimum priority" in only_final(out, user, too_low)["reason"]
    crit = only_final(out, user, critical)
    assert crit["outcome"] == "ROUTED" and sorted(crit["channels"]) == ["EMAIL", "INAPP", "PUSH", "SMS"]
    assert sorted(r["channel"] for r in out.sent(user, event_id=critical["event_id"])) == ["EMAIL", "INAPP", "PUSH", "SMS"], \
        "CRITICAL overrides a disabled type, the minimum priority and a disabled channel"
    assert sorted(r["channel"] for r in out.sent(user, event_id=high["event_id"])) == ["EMAIL", "INAPP", "PUSH"], \
        "SMS is off for this user"

    herald.preferences(user, None)  # the tombstone: back to the defaults
    again_type = ev(user, "again-type", type="COMMENT", priority="HIGH")
    again_normal = ev(user, "again-normal", priority="NORMAL", channels=["INAPP"])
    herald.send(again_type, again_normal)
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in (again_type, again_normal)), 30, "finals",
             out, user)
    settle()
    assert only_final(out, user, again_type)["outcome"] == "ROUTED"
    assert sorted(r["channel"] for r in out.sent(user, event_id=again_type["event_id"])) == ["EMAIL", "INAPP", "PUSH", "SMS"]
    assert only_final(out, user, again_normal)["outcome"] == "ROUTED"
    for e in (off_type, too_low, lowest):
        assert out.sent(user, event_id=e["event_id"]) == [], "a suppressed event reached a delivery topic"
        assert len(out.finals(user)[e["event_id"]]) == 1


# -- 4. routing by presence ------------------------------------------------------------------------

def test_routing_follows_presence(herald):
    out = herald.out
    online, offline = f"{herald.unique}-online", f"{herald.unique}-offline"
    herald.presence(online, True, expires_in_s=300)
    herald.await_online(online, True)
    live = ev(online, "live")

    align(2000, 300)
    window_start = now_ms() // 2000 * 2000
    away = [ev(offline, f"away{n}", occurred_at=now_ms() + n) for n in range(2)]
    herald.send(live, *away)
    wait_for(lambda: out.finals(online).get(live["event_id"]), 20, "the online event's final", out, online)
    wait_for(lambda: all(out.finals(offline).get(e["event_id"]) for e in away), 20, "the offline finals", out, offline)
    settle()

    final = only_final(out, online, live)
    assert final["outcome"] == "ROUTED" and sorted(final["channels"]) == ["INAPP", "WEBSOCKET"]
    assert sorted((r["channel"], r["kind"]) for r in out.sent(online, event_id=live["event_id"])) == [
        ("INAPP", "SINGLE"), ("WEBSOCKET", "SINGLE")], out.dump(online)

    ids = sorted(e["event_id"] for e in away)
    for e in away:
        inapp = out.sent(offline, "INAPP", event_id=e["event_id"])
        assert [r["kind"] for r in inapp] == ["SINGLE"] and inapp[0]["_ts"] < window_start + 2000, "in-app goes now"
        assert out.sent(offline, "WEBSOCKET") == [] and out.sent(offline, "SMS") == []
    interim = [d for d in out.of(offline, final=False) if d["outcome"] == "BATCHED"]
    assert interim and all(d["release_at"] == window_start + 2000 for d in interim), out.dump(offline)
    for channel in ("PUSH", "EMAIL"):
        batches = out.sent(offline, channel)
        assert len(batches) == 1 and batches[0]["kind"] == "BATCH" and sorted(batches[0]["event_ids"]) == ids, \
            out.dump(offline)
        assert batches[0]["_ts"] >= window_start + 2000, "the batch goes when its 2 s window has closed"
    assert {only_final(out, offline, e)["outcome"] for e in away} == {"BATCHED"}

    # a disconnect makes the user offline again
    herald.presence(online, False)
    herald.await_online(online, False)


# -- 5. batching -----------------------------------------------------------------------------------

def test_a_window_of_batchable_events_is_one_batch_per_channel(herald):
    out, user = herald.out, f"{herald.unique}-batch"
    align(2000, 300)
    three = [ev(user, f"b{n}", occurred_at=now_ms() + n) for n in range(3)]
    other_type = ev(user, "other-type", type="COMMENT")
    unbatchable = ev(user, "unbatchable", batchable=False)
    herald.send(*three, other_type, unbatchable)
    everything = [*three, other_type, unbatchable]
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in everything), 20, "finals", out, user)
    settle()

    ids = sorted(e["event_id"] for e in three)
    batch_ids = set()
    for channel in ("PUSH", "EMAIL"):
        batches = out.sent(user, channel, kind="BATCH")
        assert len(batches) == 1, f"exactly one BATCH on {channel}:\n{out.dump(user)}"
        assert sorted(batches[0]["event_ids"]) == ids and batches[0]["type"] == "TASK_DEADLINE"
        assert batches[0]["title"] == "3 task deadlines approaching"
        batch_ids.add(batches[0]["delivery_id"])
        # a batch never mixes types, and an event that may not be batched goes alone, at once
        assert [r["kind"] for r in out.sent(user, channel, event_id=other_type["event_id"])] == ["SINGLE"]
        alone = out.sent(user, channel, event_id=unbatchable["event_id"])
        assert [r["kind"] for r in alone] == ["SINGLE"] and alone[0]["_ts"] < batches[0]["_ts"]
    assert len(out.sent(user, "INAPP")) == 5 and {r["kind"] for r in out.sent(user, "INAPP")} == {"SINGLE"}
    for e in three:
        final = only_final(out, user, e)
        assert final["outcome"] == "BATCHED" and final["delivery_id"] in batch_ids, out.dump(user)
    assert only_final(out, user, unbatchable)["outcome"] == "ROUTED"


# -- 6. digests ------------------------------------------------------------------------------------

def test_low_priority_events_go_in_one_email_digest(herald):
    out, user = herald.out, f"{herald.unique}-digest"
    align(6000, 2500)
    low = [ev(user, f"low{n}", type="HABIT_REMINDER", priority="LOW", occurred_at=now_ms() + n) for n in range(3)]
    herald.send(*low)
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in low), 20, "finals", out, user)
    settle()

    digests = out.sent(user, "EMAIL")
    assert len(digests) == 1 and digests[0]["kind"] == "DIGEST", out.dump(user)
    assert sorted(digests[0]["event_ids"]) == sorted(e["event_id"] for e in low)
    interim = [d for d in out.of(user, final=False) if d["outcome"] == "DIGESTED"]
    assert len(interim) == 3 and len({d["release_at"] for d in interim}) == 1
    period_end = interim[0]["release_at"]
    assert digests[0]["_ts"] >= period_end, "the digest goes when its period ends"
    assert period_end % 6000 == 0 and period_end - 6000 <= interim[0]["at"] < period_end, "a 6 s period"
    for e in low:
        final = only_final(out, user, e)
        assert final["outcome"] == "DIGESTED" and final["delivery_id"] == digests[0]["delivery_id"]
        assert [r["kind"] for r in out.sent(user, "INAPP", event_id=e["event_id"])] == ["SINGLE"]
    assert out.sent(user, "PUSH") == [] and out.sent(user, "SMS") == []


def test_more_users_due_than_a_release_chunk_all_get_their_digest_once(throttled):
    """12 users' digests due at one period end, on a worker releasing 3 users a batch: the rest follow in
    continuation rounds, each user's digest exactly once."""
    out = throttled.out
    users = [f"{throttled.unique}-chunk{n}" for n in range(12)]
    align(6000, 2500)
    low = [ev(user, f"c{n}", type="SYSTEM", priority="LOW", occurred_at=now_ms() + n) for n, user in enumerate(users)]
    throttled.send(*low)
    for e in low:
        wait_for(lambda e=e: out.finals(e["user_id"]).get(e["event_id"]), 30, "finals", out, e["user_id"])
    settle()
    for e in low:
        digests = out.sent(e["user_id"], "EMAIL")
        assert [(d["kind"], d["event_ids"]) for d in digests] == [("DIGEST", [e["event_id"]])], out.dump(e["user_id"])
        assert only_final(out, e["user_id"], e)["outcome"] == "DIGESTED"


# -- 7. scheduling and cancellation ----------------------------------------------------------------

def test_scheduled_events_wait_and_a_cancel_withdraws_them(herald):
    """``deliver_after`` is any millisecond; this one is 900 ms into its second, as a producer's ``now + 4 s``
    often is (the worker's clock runs in whole seconds, ticking every 0.5 s)."""
    out, user = herald.out, f"{herald.unique}-sched"
    at = (now_ms() // 1000 + 4) * 1000 + 900
    scheduled = ev(user, "later", priority="HIGH", deliver_after=at)
    doomed = ev(user, "doomed", priority="HIGH", deliver_after=at + 1000, cancel_key="task-9")
    herald.send(scheduled, doomed)
    wait_for(lambda: out.of(user, doomed["event_id"]), 10, "the doomed event's decision", out, user)
    cancel = ev(user, "cancel", type="CANCEL", cancel_key="task-9")
    herald.send(cancel)
    wait_for(lambda: out.finals(user).get(cancel["event_id"]), 10, "the CANCEL's final", out, user)

    for e, when in ((scheduled, at), (doomed, at + 1000)):
        first = out.of(user, e["event_id"])[0]
        assert first["outcome"] == "SCHEDULED" and not first["final"] and first["release_at"] == when, out.dump(user)
    assert out.sent(user) == [], "nothing before deliver_after"
    wait_for(lambda: out.finals(user).get(scheduled["event_id"]), 15, "the scheduled event's final", out, user)
    sleep_until(at + 2500)  # past the doomed event's deliver_after: it would have gone by now
    settle(1)

    final = only_final(out, user, scheduled)
    assert final["outcome"] == "ROUTED"
    parts = out.sent(user, event_id=scheduled["event_id"])
    assert sorted(r["channel"] for r in parts) == ["EMAIL", "INAPP", "PUSH", "SMS"]
    assert all(r["_ts"] >= at for r in parts), "delivered at deliver_after, not before"
    assert only_final(out, user, doomed)["outcome"] == "CANCELLED"
    withdrew = only_final(out, user, cancel)
    assert withdrew["outcome"] == "CANCELLED" and "withdrew 1 pending" in withdrew["reason"]
    assert out.sent(user, event_id=doomed["event_id"]) == [], "a cancelled event reached a delivery topic"
    assert out.sent(user, event_id=cancel["event_id"]) == []


# -- 3. quiet hours (started by the minute_bound fixture) ------------------------------------------

def test_quiet_hours_hold_events_until_they_end(herald, minute_bound):
    out = herald.out
    user, window, end, (high, normal), sent = minute_bound["quiet"]
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in (high, normal)), (end - now_ms()) / 1000 + 20,
             f"the finals after quiet hours {window} {QUIET_ZONE} end at {end}", out, user)
    settle()

    for e in (high, normal):
        first = out.of(user, e["event_id"])[0]
        assert first["outcome"] == "DEFERRED_QUIET_HOURS" and not first["final"], out.dump(user)
        assert first["release_at"] == end, f"held until the end of quiet hours {window} {QUIET_ZONE}"
        assert "quiet hours until" in first["reason"] and f"{window['end']} {QUIET_ZONE}" in first["reason"]
    early = [r for r in out.sent(user) if r["_ts"] < end]
    assert early == [], f"delivered inside quiet hours:\n{out.dump(user)}"
    assert only_final(out, user, high)["outcome"] == "ROUTED"
    assert all(only_final(out, user, e)["at"] >= end for e in (high, normal)), "decided when quiet hours ended"
    assert sorted(r["channel"] for r in out.sent(user, event_id=high["event_id"])) == ["EMAIL", "INAPP", "PUSH", "SMS"]
    assert only_final(out, user, normal)["outcome"] == "BATCHED"
    assert sorted(r["channel"] for r in out.sent(user, event_id=normal["event_id"])) == ["EMAIL", "INAPP", "PUSH"]


# -- 8. rate limits (started by the minute_bound fixture, on the dedicated rate-limited worker) --------

def test_the_rate_limit_throttles_then_sends_the_rest_in_the_next_minute(throttled, minute_bound):
    out = throttled.out
    user, events, sent = minute_bound["rate"]
    minute_end = (sent // 60_000 + 1) * 60_000
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in events), (minute_end - now_ms()) / 1000 + 20,
             "all five finals", out, user)
    settle()

    ids = [e["event_id"] for e in events]
    for channel in ("PUSH", "SMS", "EMAIL"):
        now = [r for r in out.sent(user, channel) if r["_ts"] < minute_end]
        assert sorted((r["kind"], r["event_ids"][0]) for r in now) == [("SINGLE", i) for i in sorted(ids[:3])], \
            f"{channel}: the first three go at once, no more:\n{out.dump(user)}"
        later = [r for r in out.sent(user, channel) if r["_ts"] >= minute_end]
        assert len(later) == 1 and later[0]["kind"] == "BATCH" and sorted(later[0]["event_ids"]) == sorted(ids[3:]), \
            f"{channel}: the throttled two go together when the next minute starts:\n{out.dump(user)}"
    assert len(out.sent(user, "INAPP")) == 5, "in-app is not rate limited"
    for e in events[3:]:
        throttled_ = [d for d in out.of(user, e["event_id"]) if d["outcome"] == "THROTTLED"]
        assert sorted(c for d in throttled_ for c in d["channels"]) == ["EMAIL", "PUSH", "SMS"], out.dump(user)
        assert all(not d["final"] and d["release_at"] == minute_end for d in throttled_)
    for e in events[:3]:
        assert not [d for d in out.of(user, e["event_id"]) if d["outcome"] == "THROTTLED"]
    assert {only_final(out, user, e)["outcome"] for e in events} == {"ROUTED"}




# -- 8b. presence expires ----------------------------------------------------------------------------

def test_a_connection_not_renewed_within_the_ttl_counts_as_offline(throttled):
    """An API that crashed cannot leave its users online: a presence record claiming 5 minutes is trusted for
    the worker's HERALD_PRESENCE_TTL_S (15 s here: the worker must first apply it, on a busy machine) from
    when it was written."""
    user = f"{throttled.unique}-ttl"
    throttled.presence(user, True, expires_in_s=300)
    throttled.await_online(user, True)
    connected_at = now_ms()
    sleep_until(connected_at + 15_500)
    late = ev(user, "after-ttl", priority="HIGH")
    throttled.send(late)
    final = wait_for(lambda: throttled.out.finals(user).get(late["event_id"]), 20, "the late event's final",
                     throttled.out, user)[0]
    assert final["outcome"] == "ROUTED" and "WEBSOCKET" not in final["channels"] \
        and {"PUSH", "SMS", "EMAIL"} <= set(final["channels"]), throttled.out.dump(user)


# -- 9. kill -9 mid-window -------------------------------------------------------------------------

def test_kill_9_inside_a_batch_window_loses_and_duplicates_nothing(herald):
    """Killed a moment after deciding (before Faust commits the offsets, every second), the worker reads
    those records again after its restart: that must neither lose nor repeat anything. ``user`` has NORMAL
    events in an open 2 s batch window and LOW ones in an open 6 s digest; ``routed_user`` has a HIGH event
    that was already routed (final) when the worker died."""
    out, user, routed_user = herald.out, f"{herald.unique}-crash", f"{herald.unique}-crash-routed"
    align(2000, 150)
    normal = [ev(user, f"n{n}", occurred_at=now_ms() + n) for n in range(3)]
    low = [ev(user, f"l{n}", type="HABIT_REMINDER", priority="LOW", occurred_at=now_ms() + n) for n in range(2)]
    routed = ev(routed_user, "h", priority="HIGH")
    herald.send(*normal, *low, routed)
    wait_for(lambda: all(out.of(user, e["event_id"], final=False) for e in (*normal, *low))
             and out.finals(routed_user).get(routed["event_id"]), 10, "the first decisions", out, user, routed_user)
    killed_at = now_ms()
    herald.p.kill("worker")
    window_end = out.of(user, normal[0]["event_id"], final=False)[0]["release_at"]
    assert killed_at < window_end, "the worker was killed after the batch window closed: nothing was tested"
    assert out.sent(user, "PUSH") == [] and out.sent(user, "EMAIL") == []

    herald.p.start("worker")
    wait_for(lambda: all(out.finals(user).get(e["event_id"]) for e in (*normal, *low)), 60,
             "every final after the restart", out, user, more=lambda: events_progress(herald.settings))
    again = {**normal[0], "occurred_at": now_ms()}  # a producer resending an event it sent before the crash
    herald.send(again)
    wait_for(lambda: len(out.finals(user).get(again["event_id"], [])) == 2, 20, "the resent event's final", out, user)
    # whatever is still announced as waiting (a batch or digest opened again) goes out before we look
    sleep_until(max(d["release_at"] for d in out.of(user, final=False) if d["release_at"]) + 1000)
    settle()

    problems = []
    finals = out.finals(user)
    expected = {**{e["event_id"]: ["BATCHED"] for e in normal}, **{e["event_id"]: ["DIGESTED"] for e in low}}
    expected[normal[0]["event_id"]] = ["BATCHED", "DEDUPLICATED"]  # the resend after the restart
    for event_id, outcomes in expected.items():
        got = sorted(d["outcome"] for d in finals.get(event_id, []))
        if got != outcomes:
            problems.append(f"{event_id}: final decisions {got}, expected {outcomes}")
    got = [d["outcome"] for d in out.finals(routed_user).get(routed["event_id"], [])]
    if got != ["ROUTED"]:
        problems.append(f"{routed['event_id']} (HIGH, routed before the kill): final decisions {got}, expected ['ROUTED']")
    counts = Counter(r["delivery_id"] for r in out.sent(user, "PUSH"))
    if any(n > 1 for n in counts.values()):
        problems.append(f"a delivery_id more than once on the push topic: {counts}")
    ids = sorted(e["event_id"] for e in normal)
    for channel in ("PUSH", "EMAIL"):
        batches = out.sent(user, channel, kind="BATCH")
        if len(batches) != 1 or sorted(batches[0]["event_ids"]) != ids:
            problems.append(f"{channel}: {len(batches)} batches, expected one with the three events")
        for e in normal:
            carried = out.sent(user, channel, event_id=e["event_id"])
            if len({r["delivery_id"] for r in carried}) != 1:
                problems.append(f"{e['event_id']} in {len({r['delivery_id'] for r in carried})} different {channel} "
                                "deliveries, expected 1")
    digests = out.sent(user, "EMAIL", kind="DIGEST")
    if len(digests) != 1 or sorted(digests[0]["event_ids"]) != sorted(e["event_id"] for e in low):
        problems.append(f"{len(digests)} digests, expected one with the two LOW events")
    assert not problems, "\n".join(problems) + f"\nkilled at {killed_at}\n{out.dump(user, routed_user)}"


# -- 10. a second worker joins and leaves ----------------------------------------------------------

def _members(settings) -> dict[str, set[int]]:
    """The consumer group's members and the partitions each holds: its preferences partitions, whose numbers
    its feed reads on the events topic (``streams.feed``)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(10)
    topic = settings.topic("preferences")
    return {m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            for m in group.members}


def test_a_second_worker_joining_and_leaving_keeps_every_users_state(herald, tmp_path_factory):
    out, s = herald.out, herald.settings
    users: list[str] = []
    per_partition = Counter()
    n = 0
    while min(per_partition[p] for p in range(s.partitions)) < 2:
        name = f"{herald.unique}-w{n}"
        n += 1
        p = home_partition(name.encode(), s.partitions)
        if per_partition[p] < 2:
            per_partition[p] += 1
            users.append(name)

    # before: one worker holds every partition
    first = {u: ev(u, "a", priority="HIGH") for u in users}
    herald.send(*first.values())
    wait_for(lambda: all(out.finals(u).get(e["event_id"]) for u, e in first.items()), 90, "the first finals", out, *users)
    before = wait_for(lambda: (m := _members(s)) and len(m) == 1 and m, 30, "one member")
    (old_member,) = before

    second = Pipeline(herald.unique, tmp_path_factory.mktemp("second-worker"), free_port())
    second.env["HERALD_HOME"] = str(tmp_path_factory.mktemp("second-home"))  # its own RocksDB: another machine
    try:
        second.start("worker")
        split = wait_for(lambda: (m := _members(s)) and len(m) == 2 and all(m.values()) and m, 60,
                         "the partitions to be shared by two workers")
        moved = split[next(m for m in split if m != old_member)]
        assert moved and len(moved) < s.partitions
        on_second = [u for u in users if home_partition(u.encode(), s.partitions) in moved]

        # state moved with the partitions: an event id seen before is still a duplicate
        herald.send(*({**e, "occurred_at": now_ms()} for e in first.values()))
        wait_for(lambda: all(len(out.finals(u).get(e["event_id"], [])) >= 2 for u, e in first.items()), 90,
                 "the resent events' finals", out, *users)
        for u, e in first.items():
            assert "DEDUPLICATED" in [d["outcome"] for d in out.finals(u)[e["event_id"]]], out.dump(u)

        # pending work on both workers, then the second one leaves (the scheduled part is due on a whole
        # second: a due time inside a second is test_scheduled_events_wait_and_a_cancel_withdraws_them's matter)
        align(2000, 300)
        pending = {u: [ev(u, "b0", occurred_at=now_ms()), ev(u, "b1", occurred_at=now_ms() + 1),
                       ev(u, "d", type="HABIT_REMINDER", priority="LOW"),
                       ev(u, "s", priority="HIGH", deliver_after=(now_ms() // 1000 + 8) * 1000)] for u in users}
        herald.send(*(e for es in pending.values() for e in es))
        wait_for(lambda: all(out.of(u, e["event_id"]) for u, es in pending.items() for e in es), 30,
                 "every pending event's first decision", out, *users)
        assert all(not out.of(u, e["event_id"])[0]["final"] for u, es in pending.items() for e in es), \
            "each of them waits for something"
    finally:
        second.stop()
    after = wait_for(lambda: (m := _members(s)) and len(m) == 1 and set().union(*m.values()) == set(range(s.partitions))
                     and m, 60, "the survivor to hold every partition")
    assert list(after) == [old_member], "the first worker is the survivor"

    herald.send(*({**es[0], "occurred_at": now_ms()} for es in pending.values()))
    wait_for(lambda: all(out.finals(u).get(e["event_id"]) for u, es in pending.items() for e in es)
             and all(len(out.finals(u).get(es[0]["event_id"], [])) >= 2 for u, es in pending.items()), 45,
             "every final on the survivor", out, *users, more=lambda: events_progress(s))
    # whatever is still announced as waiting (a batch or digest opened again) goes out before we look
    sleep_until(max(d["release_at"] for u in users for d in out.of(u, final=False) if d["release_at"]) + 1000)
    settle()

    problems = []
    for u, (b0, b1, d, sched) in pending.items():
        where = f"{u} (partition {home_partition(u.encode(), s.partitions)}, {'moved' if u in on_second else 'stayed'})"
        finals = out.finals(u)
        expected = {first[u]["event_id"]: ["DEDUPLICATED", "ROUTED"], b0["event_id"]: ["BATCHED", "DEDUPLICATED"],
                    b1["event_id"]: ["BATCHED"], d["event_id"]: ["DIGESTED"], sched["event_id"]: ["ROUTED"]}
        for event_id, outcomes in expected.items():
            got = sorted(x["outcome"] for x in finals.get(event_id, []))
            if got != outcomes:
                problems.append(f"{where}: {event_id} final decisions {got}, expected {outcomes}")
        for channel in ("PUSH", "EMAIL"):
            batches = out.sent(u, channel, kind="BATCH")
            if len(batches) != 1 or sorted(batches[0]["event_ids"]) != sorted([b0["event_id"], b1["event_id"]]):
                problems.append(f"{where}: {len(batches)} batches on {channel}, expected one with b0 and b1")
        digests = [r["event_ids"] for r in out.sent(u, "EMAIL", kind="DIGEST")]
        if digests != [[d["event_id"]]]:
            problems.append(f"{where}: digests {digests}, expected one with {d['event_id']}")
        for channel in ("PUSH", "SMS", "EMAIL"):
            singles = out.sent(u, channel, event_id=sched["event_id"])
            if len({r["delivery_id"] for r in singles}) != 1 or min(r["_ts"] for r in singles) < sched["deliver_after"]:
                problems.append(f"{where}: the scheduled event on {channel}: {len(singles)} requests, "
                                f"{len({r['delivery_id'] for r in singles})} delivery ids, expected 1 after deliver_after")
    assert not problems, "\n".join(problems) + "\n" + out.dump(*users)


def test_a_critical_event_overtakes_other_users_events_read_in_its_batch(herald):
    """``agents.order``: a CRITICAL event behind other users' events on its partition, read in one batch with
    them, is decided before them; read in order, every one of them would be decided before it."""
    out, s = herald.out, herald.settings
    user = f"{herald.unique}-urgent"
    home = home_partition(user.encode(), s.partitions)
    crowd = [u for u in (f"{herald.unique}-crowd{i}" for i in range(2_000))
             if home_partition(u.encode(), s.partitions) == home][:50]
    ahead = [ev(crowd[i % len(crowd)], f"a{i}", priority="LOW") for i in range(1_500)]
    behind = [ev(crowd[i % len(crowd)], f"b{i}", priority="LOW") for i in range(500)]
    critical = ev(user, "now", priority="CRITICAL")
    herald.send(*ahead, critical, *behind)

    wanted = {e["event_id"] for e in (*ahead, critical)}

    def first_decisions() -> dict[str, int] | None:
        """The offset of each event's first decision: all of them on the partition of its users' home, in the
        order they were written (a batch's records share a timestamp: they are produced at its commit)."""
        firsts: dict[str, int] = {}
        for d in list(out.decisions):
            if d["event_id"] in wanted:
                assert d["_where"][1] == home, d["_where"]
                if d["event_id"] not in firsts or d["_where"][2] < firsts[d["event_id"]]:
                    firsts[d["event_id"]] = d["_where"][2]
        return firsts if len(firsts) == len(wanted) else None

    firsts = wait_for(first_decisions, 90, "a first decision for every event", out, user)
    overtaken = [e for e in ahead if firsts[e["event_id"]] > firsts[critical["event_id"]]]
    assert overtaken, "every event ahead of the CRITICAL one on its partition was decided before it"
    assert [d["outcome"] for d in out.of(user, critical["event_id"], final=True)] == ["ROUTED"]
