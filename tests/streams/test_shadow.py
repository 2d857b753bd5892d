"""The what-if run's pure parts without a broker: fates, the comparison, when an event is settled, --set."""
from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from herald.settings import Settings
from streams import shadow
from streams.replay import ReplayError


def d(event_id: str, outcome: str, final: bool = True, release_at: int | None = None, user: str = "u1") -> dict:
    return {"event_id": event_id, "user_id": user, "outcome": outcome, "final": final, "release_at": release_at}


def req(delivery_id: str, channel: str, *event_ids: str, user: str = "u1") -> dict:
    return {"delivery_id": delivery_id, "user_id": user, "channel": channel, "event_ids": list(event_ids)}


def test_a_fate_is_the_first_final_outcome_with_its_company_else_held_else_undecided():
    assert shadow.fate([d("e", "BATCHED", False, 5), d("e", "BATCHED")], 3) == "BATCHED, with 2 others"
    assert shadow.fate([d("e", "ROUTED")], 1) == "ROUTED, alone"
    assert shadow.fate([d("e", "DEDUPLICATED"), d("e", "ROUTED")], 0) == "DEDUPLICATED"  # the first final one
    assert shadow.fate([d("e", "THROTTLED", False, 5), d("e", "DIGESTED", False, 9)], 0) == "STILL_HELD (DIGESTED)"
    assert shadow.fate([], 0) == "UNDECIDED"
    assert shadow.fate([d("e", "SUPPRESSED_PREFERENCE")], 0) == "SUPPRESSED_PREFERENCE"


def test_the_comparison_counts_both_sides_and_lists_only_the_changed_events_of_the_range():
    events = {"a": "u1", "b": "u1", "c": "u2"}
    live = [d("a", "BATCHED"), d("b", "BATCHED"), d("c", "ROUTED", user="u2"), d("other", "ROUTED")]
    shade = [d("a", "BATCHED"), d("b", "BATCHED"), d("c", "THROTTLED", False, 99, user="u2")]
    live_req = [req("L1", "PUSH", "a"), req("L2", "PUSH", "b"), req("L3", "SMS", "c", user="u2"),
                req("L4", "PUSH", "other")]
    shade_req = [req("S1", "PUSH", "a", "b"), req("S1", "PUSH", "a", "b")]  # the same delivery twice counts once
    report = shadow.compare(events, live, shade, live_req, shade_req)
    assert report.events == 3
    assert report.outcomes == {"live": Counter({"BATCHED": 2, "ROUTED": 1}),
                               "shadow": Counter({"BATCHED": 2, "STILL_HELD": 1})}
    assert report.notifications == [{"user_id": "u1", "channel": "PUSH", "live": 2, "shadow": 1},
                                    {"user_id": "u2", "channel": "SMS", "live": 1, "shadow": 0}]
    assert report.channels() == {"PUSH": {"live": 2, "shadow": 1}, "SMS": {"live": 1, "shadow": 0}}
    assert report.changed == [
        {"event_id": "a", "user_id": "u1", "live": "BATCHED, alone", "shadow": "BATCHED, with 1 other"},
        {"event_id": "b", "user_id": "u1", "live": "BATCHED, alone", "shadow": "BATCHED, with 1 other"},
        {"event_id": "c", "user_id": "u2", "live": "ROUTED, alone", "shadow": "STILL_HELD (THROTTLED)"}]


def test_an_unchanged_run_reports_no_change_and_the_files_say_the_same(tmp_path):
    events = {"a": "u1"}
    same = [d("a", "ROUTED")]
    report = shadow.compare(events, same, same, [req("X", "EMAIL", "a")], [req("X", "EMAIL", "a")])
    assert report.changed == []
    js, cs = shadow.write_files(report, {"run_id": "r1"}, tmp_path, "r1")
    assert json.loads(js.read_text())["changed"] == [] and json.loads(js.read_text())["run_id"] == "r1"
    assert list(csv.DictReader(open(cs))) == [{"event_id": "a", "user_id": "u1", "live": "ROUTED, alone",
                                               "shadow": "ROUTED, alone", "changed": "0"}]


def test_an_event_is_settled_by_a_final_decision_or_an_interim_one_due_after_now():
    decisions = [d("a", "ROUTED"), d("b", "BATCHED", False, 1_000), d("c", "DIGESTED", False, 5_000)]
    assert shadow.settled(["a", "b", "c", "d"], decisions, now_ms=2_000) == 2  # a final, c due after now
    assert shadow.settled(["b"], decisions + [d("b", "BATCHED")], now_ms=2_000) == 1
    assert shadow.settled(["c"], decisions, now_ms=6_000) == 0  # due: the worker's clock will release it


def test_overrides_take_known_settings_with_values_of_their_type_and_never_the_names_of_the_run():
    assert shadow.overrides(["HERALD_BATCH_WINDOW_S=300", "herald_rate_per_minute=3"]) == {
        "HERALD_BATCH_WINDOW_S": "300", "HERALD_RATE_PER_MINUTE": "3"}
    for bad, why in (("HERALD_BATCH_WINDOW_S", "NAME=VALUE"), ("HERALD_NOPE=1", "no such setting"),
                     ("HERALD_TOPIC_PREFIX=x.", "sets it itself"), ("HERALD_BATCH_WINDOW_S=soon", "not a int")):
        with pytest.raises(ReplayError, match=why):
            shadow.overrides([bad])


def test_a_run_has_names_of_its_own():
    live = Settings(topic_prefix="herald.", app_id="herald-pipeline")
    names = shadow.shadow_names(live, "ab12")
    assert names["HERALD_TOPIC_PREFIX"] == "herald.shadow.ab12." and names["HERALD_APP_ID"] == "herald-pipeline-shadow-ab12"
    run = shadow.shadow_settings(live, names, {"HERALD_BATCH_WINDOW_S": "300"})
    assert run.batch_window_s == 300 and run.topic("events") == "herald.shadow.ab12.events"
    assert run.data_dir.endswith("shadow/ab12") and live.batch_window_s == 0
