"""The delivery core without servers: backoff, the breaker's states, templates and limits, the email's bytes."""
from __future__ import annotations

import email
import email.policy
import json
import random

import pytest

from sinks.breaker import Breaker
from sinks.email import build, message_id, valid_address
from sinks.provider import PermanentError
from sinks.retry import backoff, retry_after_seconds
from sinks.templates import Templates, groups_of, sms_segment


def test_backoff_doubles_within_jitter_and_respects_retry_after_and_cap():
    rng = random.Random(1)
    for n in range(1, 8):
        d = min(2 ** (n - 1), 30)
        assert all(d / 2 <= backoff(n, 1, 30, rng=rng) <= d for _ in range(50))
    assert backoff(1, 1, 30, retry_after=12, rng=rng) >= 12
    assert backoff(1, 1, 30, retry_after=1000, rng=rng) <= 30
    assert retry_after_seconds("7") == 7 and retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_the_breaker_opens_after_failures_probes_once_and_closes(tmp_path):
    now = [1000.0]
    b = Breaker("PUSH", "fcm", failures=3, open_s=10, state_path=tmp_path / "b.json", clock=lambda: now[0])
    for _ in range(2):
        b.failure()
    assert b.allow() and b.state == "CLOSED"
    b.failure()
    assert b.state == "OPEN" and not b.allow() and b.retry_at == 1010
    assert json.loads((tmp_path / "b.json").read_text())["state"] == "OPEN"
    now[0] = 1010
    assert b.allow() and b.state == "HALF_OPEN"
    assert not b.allow()  # one probe at a time
    b.failure()
    assert b.state == "OPEN" and b.retry_at == 1020
    now[0] = 1020
    assert b.allow()
    b.success()
    assert b.state == "CLOSED" and b.allow() and b.opened == 2
    assert json.loads((tmp_path / "b.json").read_text())["state"] == "CLOSED"


def req(**kw):
    r = {"delivery_id": "d1", "user_id": "u1", "channel": "EMAIL", "kind": "SINGLE", "event_ids": ["e1"],
         "type": "COMMENT", "priority": "NORMAL", "title": "Hi <there>", "body": "Body & more",
         "data": {"action_url": "https://x.test/a?b=1&c=2"}, "created_at": 0}
    r.update(kw)
    return r


def test_email_html_is_escaped_and_text_is_not():
    out = Templates().render("EMAIL", req(), None)
    assert out["subject"] == "Hi <there>"
    assert "Hi &lt;there&gt;" in out["html"] and "Body &amp; more" in out["html"]
    assert 'href="https://x.test/a?b=1&amp;c=2"' in out["html"]
    assert "Body & more" in out["text"] and "https://x.test/a?b=1&c=2" in out["text"]


def test_a_digest_groups_its_items_by_type_with_a_link_each():
    data = {"item.0.type": "COMMENT", "item.0.title": "A", "item.0.action_url": "https://x.test/1",
            "item.1.type": "TASK_DEADLINE", "item.1.title": "B", "item.1.action_url": "https://x.test/2",
            "item.2.type": "COMMENT", "item.2.title": "C", "item.2.action_url": "https://x.test/3"}
    r = req(kind="DIGEST", type="DIGEST", title="Your digest: 3 notifications", data=data)
    out = Templates().render("EMAIL", r, None)
    assert [g["type"] for g in groups_of(r)] == ["COMMENT", "TASK_DEADLINE"]
    assert out["html"].count("<a href=") == 3 and "Comment (2)" in out["html"]
    plain = Templates().render("EMAIL", req(kind="DIGEST", body="Comments (2): a; b\nTask deadlines (1): c", data={}), None)
    assert "Comments (2): a; b" in plain["text"] and "Task deadlines (1): c" in plain["html"]


def test_a_template_error_is_a_permanent_template_failure(tmp_path):
    (tmp_path / "push").mkdir()
    (tmp_path / "push" / "COMMENT.title.j2").write_text("{{ ''.__class__.__mro__ }}")
    (tmp_path / "push" / "OOPS.title.j2").write_text("{% if %}")
    t = Templates(str(tmp_path))
    for type_ in ("COMMENT", "OOPS"):
        with pytest.raises(PermanentError) as caught:
            t.render("PUSH", req(type=type_), None)
        assert caught.value.reason == "TEMPLATE"


def test_sms_is_one_honest_segment():
    assert sms_segment("a" * 160) == "a" * 160
    assert sms_segment("a" * 161) == "a" * 157 + "..."
    assert sms_segment("{" * 80) == "{" * 80 and len(sms_segment("{" * 81)) == 78 + 3  # two septets each
    assert sms_segment("é" * 161) == "é" * 157 + "..."  # é is GSM-7
    assert sms_segment("ж" * 70) == "ж" * 70 and sms_segment("ж" * 71) == "ж" * 69 + "…"
    assert sms_segment("😀" * 36) == "😀" * 34 + "…"  # two UCS-2 units each


def test_push_limits_and_control_characters():
    out = Templates().render("PUSH", req(title="T\x00" + "t" * 200, body="b\x1b" * 2000), None)
    assert len(out["title"]) == 100 and out["title"].endswith("…") and "\x00" not in out["title"]
    assert len(out["body"]) == 1000 and "\x1b" not in out["body"]


def test_the_email_is_multipart_with_a_stable_message_id():
    raw = build("d-é", "Herald <h@x.test>", "a@x.test", "Sujet é", "text é", "<p>html é</p>", "https://u.test/?user=u")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Sujet é" and msg["Message-ID"] == message_id("d-é") == message_id("d-é")
    assert msg["List-Unsubscribe"] == "<https://u.test/?user=u>"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert [p.get_content() for p in msg.iter_parts()] == ["text é", "<p>html é</p>"]


@pytest.mark.parametrize("address,ok", [("a@b.co", True), ("first.last+tag@sub.example.org", True),
                                        ("no-at.example.org", False), ("a@b", False), ("a b@c.org", False),
                                        ("a@b..org", False), ("a\n@b.org", False), ("x" * 65 + "@b.org", False)])
def test_email_addresses(address, ok):
    assert valid_address(address) is ok


def test_template_lookup_prefers_type_then_locale_then_defaults(tmp_path):
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "COMMENT.pt.body.j2").write_text("Olá {{ title }}")
    t = Templates(str(tmp_path))
    r = req(channel="SMS", title="New comment", body="Ada replied")
    assert t.render("SMS", r, {"locale": "pt-BR"})["body"] == "Olá New comment"
    assert t.render("SMS", r, {"locale": "../../etc"})["body"] == "New comment: Ada replied"
    assert t.render("SMS", {**r, "type": "../x"}, None)["body"] == "New comment: Ada replied"


def test_breaker_states_are_listed_for_status(tmp_path):
    from sinks.breaker import read_states

    Breaker("SMS", "twilio", state_path=tmp_path / "breaker-sms.json")
    b = Breaker("EMAIL", "smtp", failures=1, state_path=tmp_path / "breaker-email.json")
    b.failure()
    (tmp_path / "breaker-push.json").write_text("{not json")
    assert [(s["channel"], s["state"]) for s in read_states(tmp_path)] == [("EMAIL", "OPEN"), ("SMS", "CLOSED")]
