"""Email, push and SMS sinks against the real broker, registry and database, sending to the local mail
catcher and provider sandbox (real servers on free ports). Each case ends in a clear status or dead letter,
the sink stays alive, and no delivery_id reaches a provider twice (counted on what the servers received)."""
from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition

from infra import postgres
from sinks import runtime
from sinks.breaker import Breaker
from sinks.email import message_id
from tests.sinks.helpers import Kafka, Server, TcpProxy, by_id, request, running, settings_for, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("servers")
    sandbox, catcher = Server("infra.sandbox", logdir), Server("infra.mailcatcher", logdir)
    yield sandbox, catcher
    sandbox.stop()
    catcher.stop()


@pytest.fixture
def sandbox(servers):
    servers[0].post("/_sandbox/faults", {})
    yield servers[0]
    servers[0].post("/_sandbox/faults", {})


@pytest.fixture
def catcher(servers):
    return servers[1]


def sink(settings, channel, pool, tmp_path, **kwargs):
    breaker = kwargs.pop("breaker", None) or Breaker(channel, "test", settings.sink_breaker_failures,
                                                     settings.sink_breaker_open_s, tmp_path / f"breaker-{channel}.json")
    return runtime.build(settings, channel, pool, breaker=breaker, retry_poll_s=0.1, **kwargs)


def env(unique, sandbox, catcher, **overrides):
    return settings_for(unique, smtp_url=f"smtp://127.0.0.1:{catcher.port}", push_url=sandbox.url,
                        sms_url=sandbox.url, **overrides)


def mails_for(catcher, rcpt: str) -> list[dict]:
    return [m for m in catcher.get("/messages") if rcpt in m["rcpt_tos"]]


def pushes_for(sandbox, token_prefix: str) -> list[dict]:
    return [m for m in sandbox.get("/_sandbox/messages?kind=push") if m["token"].startswith(token_prefix)]


def sms_for(sandbox, number: str) -> list[dict]:
    return [m for m in sandbox.get("/_sandbox/messages?kind=sms") if m["to"] == number]


async def test_email_goes_out_once_as_text_and_html_even_when_read_again(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher)
    kafka = Kafka(settings)
    user, rcpt = f"{unique}-u", f"{unique}@example.test"
    kafka.contact(user, email=rcpt)
    reqs = [request(user, "EMAIL", title=f"Hello {i} <b>", body="Line one\nLine <two> & é") for i in range(3)]
    kafka.send("EMAIL", reqs + [reqs[0]])  # the same delivery twice in the topic
    async with running(sink(settings, "EMAIL", pool, tmp_path)):
        await wait_for(lambda: len(kafka.statuses()) >= 3 and len(mails_for(catcher, rcpt)) >= 3, 60)
        await asyncio.sleep(1)
    mails = mails_for(catcher, rcpt)
    assert Counter(m["message_id"] for m in mails) == Counter({message_id(r["delivery_id"]): 1 for r in reqs})
    assert by_id(kafka.statuses()) == {r["delivery_id"]: ["SENT"] for r in reqs}
    msg = email.message_from_string(mails[0]["raw"], policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = (p.get_content() for p in msg.iter_parts())
    assert "Line <two> & é" in text and "Line &lt;two&gt; &amp; é" in html and "&lt;b&gt;" in html
    assert msg["List-Unsubscribe"].startswith("<") and f"user={user}" in msg["List-Unsubscribe"]
    # a replay: another consumer group reads the topic from the start; the ledger lets nothing through
    replay = env(unique, sandbox, catcher, app_id=f"{unique}-replay")
    async with running(sink(replay, "EMAIL", pool, tmp_path)):
        await asyncio.sleep(4)
    assert len(mails_for(catcher, rcpt)) == 3 and len(kafka.statuses()) == 3


async def test_unknown_users_and_bad_addresses_end_clearly(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher)
    kafka = Kafka(settings)
    nobody, no_phone, bad_mail, bad_phone, magic = (f"{unique}-{n}" for n in ("nobody", "nophone", "badmail",
                                                                               "badphone", "magic"))
    kafka.contact(no_phone, email=f"{unique}@example.test")
    kafka.contact(bad_mail, email="not an address")
    kafka.contact(bad_phone, phone="555-1234")
    kafka.contact(magic, phone="+15005550001")
    mails = {u: request(u, "EMAIL") for u in (nobody, bad_mail)}
    texts = {u: request(u, "SMS") for u in (no_phone, bad_phone, magic)}
    poison = request(f"{unique}-nul\x00", "EMAIL")
    kafka.send("EMAIL", [poison] + list(mails.values()))
    kafka.send("SMS", list(texts.values()))
    async with running(sink(settings, "EMAIL", pool, tmp_path)), running(sink(settings, "SMS", pool, tmp_path)):
        await wait_for(lambda: len(by_id(kafka.statuses())) == 6, 60)
    got = by_id(kafka.statuses())
    assert got[mails[nobody]["delivery_id"]] == ["SUPPRESSED"]
    assert got[poison["delivery_id"]] == ["FAILED", "DEAD"]  # the ledger cannot store it; the rest go on
    assert got[texts[no_phone]["delivery_id"]] == ["SUPPRESSED"]
    for r in (mails[bad_mail], texts[bad_phone], texts[magic]):
        assert got[r["delivery_id"]] == ["FAILED", "DEAD"]
    reasons = Counter(d["headers"]["herald.error.reason"] for d in kafka.dead_letters())
    assert reasons == Counter({"INVALID_ADDRESS": 3, "REJECTED": 1})
    assert sms_for(sandbox, "+15005550001") == []


async def test_push_is_retried_after_5xx_and_unregistered_tokens_leave_the_contact(pool, unique, sandbox, catcher,
                                                                                   tmp_path):
    settings = env(unique, sandbox, catcher)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    tokens = [f"{unique}-a", f"{unique}-b", f"unregistered-{unique}"]
    kafka.contact(user, tokens=tokens)
    sandbox.post("/_sandbox/faults", {"fail_rate": 1.0, "status": 503, "retry_after": 0, "budget": 2})
    r = request(user, "PUSH")
    kafka.send("PUSH", [r])
    async with running(sink(settings, "PUSH", pool, tmp_path)):
        await wait_for(lambda: "SENT" in by_id(kafka.statuses()).get(r["delivery_id"], []), 60)
        await wait_for(lambda: any(c["push_tokens"] == tokens[:2] for c in kafka.read("contacts", "Contact")), 10)
        await asyncio.sleep(1)
    statuses = [s for s in kafka.statuses() if s["delivery_id"] == r["delivery_id"]]
    assert [s["status"] for s in statuses][-1] == "SENT" and "RETRYING" in [s["status"] for s in statuses]
    assert [s["attempt"] for s in statuses] == sorted(s["attempt"] for s in statuses)
    assert Counter(m["token"] for m in pushes_for(sandbox, unique)) == Counter({tokens[0]: 1, tokens[1]: 1})


async def test_exhausted_attempts_are_dead_lettered_max_attempts(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher, sink_max_attempts=3, sink_breaker_failures=100)
    kafka = Kafka(settings)
    user = f"{unique}-u"
    kafka.contact(user, phone="+15551230001")
    sandbox.post("/_sandbox/faults", {"fail_rate": 1.0, "status": 429, "retry_after": 0})
    r = request(user, "SMS")
    kafka.send("SMS", [r])
    async with running(sink(settings, "SMS", pool, tmp_path)):
        await wait_for(lambda: "DEAD" in by_id(kafka.statuses()).get(r["delivery_id"], []), 60)
    statuses = [(s["status"], s["attempt"]) for s in kafka.statuses()]
    assert statuses == [("RETRYING", 1), ("RETRYING", 2), ("DEAD", 3)]
    (letter,) = kafka.dead_letters()
    assert letter["headers"]["herald.error.reason"] == "MAX_ATTEMPTS" and letter["key"] == user.encode()
    assert letter["headers"]["herald.source.topic"] == settings.topic("delivery.sms")


async def test_an_open_circuit_holds_requests_then_each_goes_once(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher, sink_breaker_failures=2, sink_breaker_open_s=1.0, sink_max_attempts=10)
    kafka = Kafka(settings)
    users = [f"{unique}-{i}" for i in range(8)]
    for i, u in enumerate(users):
        kafka.contact(u, phone=f"+1555{int(unique[1:7], 16) % 1000:03d}{i:04d}")
    sandbox.post("/_sandbox/faults", {"fail_rate": 1.0, "status": 503})
    breaker = Breaker("SMS", "twilio", 2, 1.0, tmp_path / "b.json")
    runner = sink(settings, "SMS", pool, tmp_path, breaker=breaker)
    reqs = [request(u, "SMS") for u in users]
    async with running(runner):
        kafka.send("SMS", reqs)
        await wait_for(lambda: breaker.opened >= 1, 20)
        await wait_for(lambda: [s for s in kafka.statuses() if (s["error"] or "").startswith("circuit open")], 20)
        assert (tmp_path / "b.json").exists()
        sandbox.post("/_sandbox/faults", {})
        await wait_for(lambda: all("SENT" in v for v in by_id(kafka.statuses()).values())
                       and len(by_id(kafka.statuses())) == len(reqs), 60)
    assert breaker.state == "CLOSED"
    numbers = [m["to"] for m in sandbox.get("/_sandbox/messages?kind=sms") if m["to"].startswith("+1555")]
    mine = Counter(n for n in numbers if n in {f"+1555{int(unique[1:7], 16) % 1000:03d}{i:04d}" for i in range(8)})
    assert sorted(mine.values()) == [1] * len(users)


async def test_a_request_waiting_for_its_retry_does_not_hold_up_its_partition(pool, unique, sandbox, catcher,
                                                                             tmp_path):
    settings = env(unique, sandbox, catcher, partitions=1, sink_retry_base_s=30, sink_retry_max_s=60)
    kafka = Kafka(settings)
    slow, others = f"{unique}-slow", [f"{unique}-o{i}" for i in range(5)]
    kafka.contact(slow, email=f"defer-{unique}@example.test")  # the catcher answers 451 to it
    for u in others:
        kafka.contact(u, email=f"{u}@example.test")
    first = request(slow, "EMAIL")
    rest = [request(u, "EMAIL") for u in others]
    async with running(sink(settings, "EMAIL", pool, tmp_path)):
        kafka.send("EMAIL", [first] + rest)
        await wait_for(lambda: all(by_id(kafka.statuses()).get(r["delivery_id"]) == ["SENT"] for r in rest), 60)
        assert by_id(kafka.statuses())[first["delivery_id"]] == ["RETRYING"]
        await asyncio.sleep(1)
        c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{unique}-app-sink-email"})
        (committed,) = c.committed([TopicPartition(settings.topic("delivery.email"), 0)], timeout=10)
        c.close()
        assert committed.offset == 6  # past the waiting request: its retry lives in the ledger
    row = await pool.fetchrow("SELECT status, attempts, request IS NOT NULL AS kept FROM delivery_ledger "
                              "WHERE delivery_id = $1", first["delivery_id"])
    assert dict(row) == {"status": "RETRYING", "attempts": 1, "kept": True}


async def test_templates_control_characters_garbage_and_hangs(pool, unique, sandbox, catcher, tmp_path):
    tdir = tmp_path / "templates"
    (tdir / "email").mkdir(parents=True)
    (tdir / "email" / "BROKEN.subject.j2").write_text("{{ data.missing.deeper() }}")
    (tdir / "email" / "COMMENT.fr.subject.j2").write_text("Nouveau : {{ title }}")
    settings = env(unique, sandbox, catcher, templates_dir=str(tdir), sink_send_timeout_s=1.0,
                   sink_breaker_failures=100)
    kafka = Kafka(settings)
    u = f"{unique}-u"
    kafka.contact(u, email=f"{unique}@example.test", phone="+15557770001", locale="fr-CA")
    broken = request(u, "EMAIL", type="BROKEN")
    controls = request(u, "EMAIL", title="Ding\x07 dong\x1b[31m", body="a\x00b\x08c\x7fd\te")
    kafka.send("EMAIL", [broken, controls])
    async with running(sink(settings, "EMAIL", pool, tmp_path)):
        await wait_for(lambda: len(by_id(kafka.statuses())) == 2, 60)
    got = by_id(kafka.statuses())
    assert got[broken["delivery_id"]] == ["FAILED", "DEAD"] and got[controls["delivery_id"]] == ["SENT"]
    assert kafka.dead_letters()[0]["headers"]["herald.error.reason"] == "TEMPLATE"
    (mail,) = mails_for(catcher, f"{unique}@example.test")
    msg = email.message_from_string(mail["raw"], policy=email.policy.default)
    assert msg["Subject"] == "Nouveau : Ding dong[31m"  # the locale's template, without the control bytes
    text = msg.get_body(("plain",)).get_content()
    assert "abcd\te" in text
    # SMS: a 200 with garbage is a permanent failure (the provider may have it: never sent again); a hang
    # past the timeout is retried and sent once
    sandbox.post("/_sandbox/faults", {"garbage_rate": 1.0, "budget": 1})
    garbage = request(u, "SMS", body="first")
    kafka.send("SMS", [garbage])
    async with running(sink(settings, "SMS", pool, tmp_path)) as _:
        await wait_for(lambda: "DEAD" in by_id(kafka.statuses()).get(garbage["delivery_id"], []), 60)
        sandbox.post("/_sandbox/faults", {"hang_rate": 1.0, "hang_s": 3, "budget": 1})
        hang = request(u, "SMS", body="second")
        kafka.send("SMS", [hang])
        await wait_for(lambda: "SENT" in by_id(kafka.statuses()).get(hang["delivery_id"], []), 60)
    assert by_id(kafka.statuses())[garbage["delivery_id"]] == ["FAILED", "DEAD"]
    assert by_id(kafka.statuses())[hang["delivery_id"]] == ["RETRYING", "SENT"]
    assert Counter(m["body"].split(": ", 1)[1] for m in sms_for(sandbox, "+15557770001")) == Counter(
        {"first": 1, "second": 1})


async def test_a_large_record_is_dead_lettered_too_large(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher)
    kafka = Kafka(settings)
    u = f"{unique}-u"
    kafka.contact(u, email=f"{unique}@example.test")
    big, fine = request(u, "EMAIL", body="x" * 900_000), request(u, "EMAIL")
    kafka.send("EMAIL", [big, fine])
    async with running(sink(settings, "EMAIL", pool, tmp_path)):
        # a loaded machine takes its time with the large record: wait for both outcomes, then check them exactly
        await wait_for(lambda: by_id(kafka.statuses()).get(fine["delivery_id"]) and kafka.dead_letters(), 120)
        await asyncio.sleep(2)  # anything more (a second dead letter, a status for the large one) would show now
    assert [d["headers"]["herald.error.reason"] for d in kafka.dead_letters()] == ["TOO_LARGE"]
    assert by_id(kafka.statuses()) == {fine["delivery_id"]: ["SENT"]}


async def test_a_contact_written_now_is_used_within_seconds(pool, unique, sandbox, catcher, tmp_path):
    settings = env(unique, sandbox, catcher)
    kafka = Kafka(settings)
    u = f"{unique}-u"
    before = request(u, "PUSH")
    async with running(sink(settings, "PUSH", pool, tmp_path)):
        kafka.send("PUSH", [before])
        await wait_for(lambda: by_id(kafka.statuses()).get(before["delivery_id"]) == ["SUPPRESSED"], 60)
        kafka.contact(u, tokens=[f"{unique}-tok"])
        await asyncio.sleep(5)
        after = request(u, "PUSH")
        kafka.send("PUSH", [after])
        await wait_for(lambda: by_id(kafka.statuses()).get(after["delivery_id"]) == ["SENT"], 60)
    assert len(pushes_for(sandbox, unique)) == 1


async def test_the_ledger_database_away_holds_sends_and_nothing_goes_twice(pool, unique, sandbox, catcher, tmp_path):
    port = int(postgres.database_url().rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.up()
    dsn = postgres.database_url().replace(f":{port}/", f":{proxy.port}/")
    settings = env(unique, sandbox, catcher, database_url=dsn)
    kafka = Kafka(settings)
    u = f"{unique}-u"
    kafka.contact(u, phone="+15558880001")
    sink_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with running(sink(settings, "SMS", sink_pool, tmp_path)):
            one = request(u, "SMS", body="one")
            kafka.send("SMS", [one])
            await wait_for(lambda: len(kafka.statuses()) == 1, 60)
            await proxy.down()
            held = [request(u, "SMS", body=f"held{i}") for i in range(3)]
            kafka.send("SMS", held)
            await asyncio.sleep(4)
            assert len(kafka.statuses()) == 1 and len(sms_for(sandbox, "+15558880001")) == 1
            await proxy.up()
            await wait_for(lambda: len(kafka.statuses()) == 4, 60)
        assert {d: v for d, v in by_id(kafka.statuses()).items() if v != ["SENT"]} == {}
        bodies = Counter(m["body"].split(": ", 1)[1] for m in sms_for(sandbox, "+15558880001"))
        assert bodies == Counter({"one": 1, "held0": 1, "held1": 1, "held2": 1})
    finally:
        await proxy.down()
        sink_pool.terminate()


async def test_a_claim_left_by_a_dead_process_is_never_sent_and_ends_in_doubt(pool, unique, sandbox, catcher,
                                                                             tmp_path):
    settings = env(unique, sandbox, catcher, sink_claim_lease_s=2.0)
    kafka = Kafka(settings)
    u = f"{unique}-u"
    kafka.contact(u, tokens=[f"{unique}-t"])
    r = request(u, "PUSH")
    await pool.execute("INSERT INTO delivery_ledger (delivery_id, channel, status, claimed_by, claimed_at) "
                       "VALUES ($1, 'PUSH', 'CLAIMED', 'gone', now())", r["delivery_id"])
    kafka.send("PUSH", [r])
    runner = sink(settings, "PUSH", pool, tmp_path)
    runner._next_janitor = 0
    async with running(runner):
        await wait_for(lambda: by_id(kafka.statuses()).get(r["delivery_id"]) == ["DEAD"], 60)
    assert pushes_for(sandbox, unique) == []
    assert await pool.fetchval("SELECT status FROM delivery_ledger WHERE delivery_id = $1", r["delivery_id"]) == "DEAD"
    assert kafka.dead_letters() == []  # no bytes were kept by the claim that never happened here



async def test_two_sinks_sharing_a_group_through_a_rebalance_send_each_delivery_once(pool, unique, sandbox, catcher,
                                                                                     tmp_path):
    settings = env(unique, sandbox, catcher, sink_batch_size=20, sink_concurrency=5)
    kafka = Kafka(settings)
    users = [f"{unique}-{i}" for i in range(10)]
    for u in users:
        kafka.contact(u, tokens=[f"{u}-tok"])
    reqs = [request(users[i % len(users)], "PUSH") for i in range(300)]
    kafka.send("PUSH", reqs)
    first, second = sink(settings, "PUSH", pool, tmp_path), sink(settings, "PUSH", pool, tmp_path)
    async with running(first):
        await wait_for(lambda: first.delivered >= 30, 30, 0.05)
        async with running(second):  # joins: the partitions are shared out again mid-stream
            await wait_for(lambda: first.delivered + second.delivered >= 150, 60, 0.05)
            first.stop()  # leaves: the second takes every partition over
            await wait_for(lambda: len(by_id(kafka.statuses())) == 300, 60)
    assert {d: v for d, v in by_id(kafka.statuses()).items() if v != ["SENT"]} == {}
    assert Counter(m["token"] for m in pushes_for(sandbox, unique)) == Counter({f"{u}-tok": 30 for u in users})
