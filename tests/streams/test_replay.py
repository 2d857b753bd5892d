"""herald replay's rules without a broker: positions, spans, re-drive headers and which dead letters are refused."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from herald import dlq
from herald.settings import Settings
from streams import replay
from streams.replay import Position, ReplayError, Span


def test_positions_are_times_or_offsets():
    assert replay.parse_position(None) is None
    assert replay.parse_position("1700000000000") == Position(ms=1_700_000_000_000)
    assert replay.parse_position("2026-11-23T10:00:00Z") == Position(ms=1_795_428_000_000)
    assert replay.parse_position("2026-11-23T11:00:00+01:00") == Position(ms=1_795_428_000_000)
    assert replay.parse_position("offset:1200") == Position(every=1200)
    assert replay.parse_position("0:1200,3:980") == Position(offsets={0: 1200, 3: 980})
    for bad in ("yesterday", "offset:", "0:12,x:3", "-5"):
        with pytest.raises(ReplayError, match="not a time"):
            replay.parse_position(bad)


class FakeConsumer:
    """Four partitions holding offsets 10 to 99 each, stamped with their offset in ms; partition 2 answers
    no offset for any time."""

    def list_topics(self, topic, timeout):
        @dataclass
        class Meta:
            partitions: dict
            error: object = None

        @dataclass
        class All:
            topics: dict

        return All({"t": Meta({p: None for p in range(4)})})

    def get_watermark_offsets(self, tp, timeout):
        return 10, 100

    def offsets_for_times(self, tps, timeout):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, -1 if tp.partition == 2 or tp.offset > 99 else max(tp.offset, 10))
                for tp in tps]


def test_a_plan_reads_from_the_start_to_the_end_known_when_it_starts():
    c = FakeConsumer()
    assert replay.plan(c, "t", None, None) == [Span(p, 10, 100) for p in range(4)]
    assert replay.plan(c, "t", Position(every=20), Position(every=30)) == [Span(p, 20, 30) for p in range(4)]
    # a time start: partitions without a record after it are left out; a time end stops before the first
    # record stamped after it (and is checked per record too)
    assert replay.plan(c, "t", Position(ms=50), Position(ms=69)) == [Span(p, 50, 70, 69) for p in (0, 1, 3)]
    assert replay.plan(c, "t", Position(ms=50), Position(ms=500)) == [Span(p, 50, 100, 500) for p in (0, 1, 3)]
    # per-partition: --from names the partitions read; --until stops those it names, the others run to the end
    assert replay.plan(c, "t", Position(offsets={1: 40, 3: 5}), Position(offsets={1: 45})) == [Span(1, 40, 45),
                                                                                              Span(3, 10, 100)]
    assert replay.plan(c, "t", Position(every=200), None) == []  # past the end: nothing
    with pytest.raises(ReplayError, match="partitions 0 to 3"):
        replay.plan(c, "t", Position(offsets={7: 0}), None)
    with pytest.raises(ReplayError, match="no topic 'nope'"):
        replay.plan(c, "nope", None, None)


def test_a_redriven_record_drops_the_error_headers_keeps_the_rest_and_says_where_it_came_from():
    original = [("traceparent", b"00-abc"), ("herald.replayed.from", b"old:0:1")]
    headers = dlq.headers("VALIDATION", "title is over 1000 characters", "ingest", "h.events", 2, 17, original)
    out = replay.redrive_headers(headers + [("herald.error.truncated", b"5")], "h.dlq", 1, 42)
    assert out == [("traceparent", b"00-abc"), ("herald.source.topic", b"h.events"),
                   ("herald.source.partition", b"2"), ("herald.source.offset", b"17"),
                   ("herald.replayed.from", b"h.dlq:1:42")]


class Msg:
    def __init__(self, headers, key=b"u1", value=b"\x00\x00\x00\x00\x01x"):
        self._headers, self._key, self._value = headers, key, value

    def headers(self):
        return self._headers

    def key(self):
        return self._key

    def value(self):
        return self._value


class PassingChecker:
    def __init__(self):
        self.asked = []

    def check(self, topic, key, value, now_ms):
        self.asked.append(topic)
        return None


def letter(reason, stage="ingest", topic="h.events", extra=()):
    return Msg(dlq.headers(reason, "m", stage, topic, 0, 5) + list(extra))


def test_which_dead_letters_are_checked_and_which_are_refused_outright():
    checker = PassingChecker()
    assert replay.verdict(checker, letter("SCHEMA_NOT_FOUND"), None, 0) == ("h.events", None)
    assert replay.verdict(checker, letter("INTERNAL", "pipeline"), "other", 0) == ("other", None)  # --to wins
    assert checker.asked == ["h.events", "other"]
    assert replay.verdict(checker, letter("MAX_ATTEMPTS", "sink-email", "h.delivery.email"), None, 0)[1][0] == \
        "DELIVERY_FINAL"
    assert replay.verdict(checker, letter("INTERNAL", "sink-push", "h.delivery.push"), None, 0)[1][0] == "DELIVERY_FINAL"
    # a request a sink could not decode never reached the ledger: it is checked like any other
    assert replay.verdict(checker, letter("DECODE_ERROR", "sink-sms", "h.delivery.sms"), None, 0) == ("h.delivery.sms", None)
    assert replay.verdict(checker, letter("TOO_LARGE", extra=[("herald.error.truncated", b"2000000")]), None, 0)[1][0] == \
        "TRUNCATED"
    assert replay.verdict(checker, Msg([("herald.error.reason", b"VALIDATION")]), None, 0)[1][0] == "NO_SOURCE"
    assert checker.asked == ["h.events", "other", "h.delivery.sms"]


class RefusingCodec:
    def decode(self, value, schema):
        raise AssertionError("not to be decoded")


def test_the_checker_refuses_the_dead_letter_topic_and_keeps_tombstones_of_compacted_topics():
    settings = Settings(topic_prefix="h.")
    checker = replay.Checker(settings, codec=RefusingCodec())
    assert checker.check("h.dlq", b"u1", b"x", 0)[0] == "DESTINATION"
    assert checker.check("h.preferences", b"u1", None, 0) is None  # a reset to the defaults
    assert checker.check("h.preferences", b"", None, 0)[0] == "VALIDATION"
    assert replay.schema_of(settings, "h.events") == (True, "NotificationEvent", False)
    assert replay.schema_of(settings, "archive.events") == (False, None, False)


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch):
    import argparse
    import io
    import sys

    from streams import commands

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    on_plan, tick, stop = commands._replay_progress(argparse.Namespace(quiet=False, max=0), "replaying h.events")
    on_plan(250)
    for n in range(1, 251):
        tick(n)
    stop()
    assert "replaying h.events" in screen.getvalue() and "250/250" in screen.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    on_plan, tick, stop = commands._replay_progress(argparse.Namespace(quiet=True, max=0), "replaying h.events")
    on_plan(5), tick(5), stop()
    assert quiet.getvalue() == ""


def test_a_replay_between_herald_topics_of_different_schemas_is_refused():
    settings = Settings(topic_prefix="h.")
    with pytest.raises(ReplayError, match="h.decisions carries herald.Decision and h.events takes herald.NotificationEvent"):
        replay.same_schema(settings, "h.decisions", "h.events")
    replay.same_schema(settings, "h.events", "h.events")
    replay.same_schema(settings, "h.dlq", "h.events")  # dead letters are raw bytes: not judged
    replay.same_schema(settings, "archive.events", "h.events")  # not a Herald topic: not judged


def test_the_shadow_run_and_the_rebuild_teach_by_example():
    import subprocess
    import sys

    from infra.common import REPO_ROOT

    def help_of(*argv: str) -> str:
        result = subprocess.run([sys.executable, "-m", "streams.cli", *argv, "--help"], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    replay_help = help_of("replay")
    assert "herald replay --shadow --set HERALD_BATCH_WINDOW_S=300" in replay_help and "--include-decided" in replay_help
    rebuild_help = help_of("rebuild")
    assert "examples:" in rebuild_help and "herald rebuild inbox --force" in rebuild_help


def test_shadow_options_go_with_shadow_only(monkeypatch):
    from streams import cli

    monkeypatch.setenv("HERALD_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: the options are refused first
    monkeypatch.setattr("streams.commands._require_kafka", lambda settings: None)
    assert cli.main(["replay", "--set", "HERALD_BATCH_WINDOW_S=300"]) == 2
    assert cli.main(["replay", "--shadow", "--dlq"]) == 2
    assert cli.main(["replay", "--dlq", "--include-decided"]) == 2
