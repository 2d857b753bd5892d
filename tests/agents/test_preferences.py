import json
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.preferences import (
    allows_channel,
    allows_type,
    batch_window_s,
    defaults,
    effective,
    local_ms,
    max_batch_size,
    max_per_hour,
    meets_minimum,
    parse_hhmm,
    to_local,
    validate,
    validate_fields,
    zone,
)

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas/avro/herald.Preferences.avsc").read_text())
BERLIN = ZoneInfo("Europe/Berlin")


def utc_ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def test_defaults_have_every_schema_field_and_its_schema_default():
    record = defaults("u1")
    assert list(record) == [f["name"] for f in SCHEMA["fields"]]
    for field in SCHEMA["fields"]:
        if "default" in field:
            assert record[field["name"]] == field["default"], field["name"]
    assert record["user_id"] == "u1"
    assert (record["batching"], record["batch_window_s"], record["max_batch_size"]) == (True, 30, 50)


def test_defaults_are_a_fresh_record_each_time():
    defaults("u")["channels"]["EMAIL"] = False
    assert defaults("u")["channels"] == {}


def test_effective_of_nothing_is_the_defaults():
    assert effective(None, "u") == defaults("u")
    assert effective({}, "u") == defaults("u")


def test_effective_overlays_the_given_keys_and_keeps_the_rest():
    prefs = effective({"timezone": "Europe/Berlin", "channels": {"SMS": False}, "max_per_hour": 5}, "u")
    assert prefs["timezone"] == "Europe/Berlin"
    assert prefs["channels"] == {"SMS": False}
    assert prefs["max_per_hour"] == 5
    assert prefs["digest_mode"] == "IMMEDIATE" and prefs["batch_window_s"] == 30


def test_effective_none_takes_the_default_only_where_the_schema_has_no_null():
    prefs = effective({"timezone": None, "batching": None, "quiet_hours": None, "max_per_hour": None}, "u")
    assert prefs["timezone"] == "UTC" and prefs["batching"] is True
    assert prefs["quiet_hours"] is None and prefs["max_per_hour"] is None


def test_effective_user_id_is_the_key_and_updated_at_is_epoch_ms():
    at = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    prefs = effective({"user_id": "someone-else", "updated_at": at}, "u")
    assert prefs["user_id"] == "u"
    assert prefs["updated_at"] == utc_ms(2026, 11, 23, 12, 0)
    assert effective({"updated_at": 1234}, "u")["updated_at"] == 1234


def test_effective_does_not_share_maps_with_its_input():
    given_prefs = {"channels": {"SMS": False}, "dnd": [{"day": 0, "start": "07:00", "end": "09:00"}]}
    prefs = effective(given_prefs, "u")
    prefs["channels"]["EMAIL"] = False
    prefs["dnd"][0]["day"] = 3
    assert given_prefs == {"channels": {"SMS": False}, "dnd": [{"day": 0, "start": "07:00", "end": "09:00"}]}


def test_a_missing_channel_or_type_is_enabled():
    prefs = {"channels": {"SMS": False, "PUSH": True}, "types": {"COMMENT": False}}
    assert not allows_channel(prefs, "SMS")
    assert allows_channel(prefs, "PUSH") and allows_channel(prefs, "EMAIL")
    assert not allows_type(prefs, "COMMENT") and allows_type(prefs, "TASK_DEADLINE")
    assert allows_channel(None, "SMS") and allows_type({}, "COMMENT")
    assert allows_channel({"channels": None}, "SMS")


@pytest.mark.parametrize(
    "minimum, passing",
    [
        ("LOW", {"CRITICAL", "HIGH", "NORMAL", "LOW"}),
        ("NORMAL", {"CRITICAL", "HIGH", "NORMAL"}),
        ("HIGH", {"CRITICAL", "HIGH"}),
        ("CRITICAL", {"CRITICAL"}),
    ],
)
def test_meets_minimum_orders_critical_high_normal_low(minimum, passing):
    for priority in ("CRITICAL", "HIGH", "NORMAL", "LOW"):
        assert meets_minimum({"minimum_priority": minimum}, priority) == (priority in passing)


def test_meets_minimum_defaults_to_low_and_rejects_an_unknown_priority():
    assert meets_minimum(None, "LOW") and meets_minimum({"minimum_priority": "BOGUS"}, "LOW")
    with pytest.raises(ValueError):
        meets_minimum({}, "URGENT")


def test_defaults_and_a_full_valid_record_validate():
    assert validate(defaults("u")) == []
    assert validate({}) == []
    full = {
        **defaults("u"),
        "timezone": "America/New_York",
        "channels": {"SMS": False},
        "types": {"COMMENT": True},
        "minimum_priority": "NORMAL",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "dnd": [{"day": 6, "start": "00:00", "end": "23:59"}],
        "digest_mode": "WEEKLY",
        "digest_time": "18:30",
        "digest_day": 4,
        "batch_window_s": 86_400,
        "max_batch_size": 1_000,
        "max_per_hour": 100_000,
        "updated_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
    }
    assert validate(full) == []


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),
        ({"timezone": "right/Europe/Berlin"}, "timezone"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00"}}, "quiet_hours start"),
        ({"quiet_hours": {"start": "7:00", "end": "07:00"}}, "quiet_hours start"),
        ({"quiet_hours": {"start": "22:00", "end": "07:60"}}, "quiet_hours end"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours is missing end"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "day": 1}}, "quiet_hours has unknown keys day"),
        ({"dnd": [{"day": 7, "start": "07:00", "end": "09:00"}]}, "dnd [0] day"),
        ({"dnd": [{"day": True, "start": "07:00", "end": "09:00"}]}, "dnd [0] day"),
        ({"dnd": [{"day": 0, "start": "07:00", "end": "9"}]}, "dnd [0] end"),
        ({"dnd": {"day": 0}}, "dnd"),
        ({"digest_day": 7}, "digest_day"),
        ({"digest_day": -1}, "digest_day"),
        ({"digest_time": "9am"}, "digest_time"),
        ({"batch_window_s": 0}, "batch_window_s"),
        ({"batch_window_s": 86_401}, "batch_window_s"),
        ({"batch_window_s": 30.5}, "batch_window_s"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 1_001}, "max_batch_size"),
        ({"max_per_hour": 0}, "max_per_hour"),
        ({"max_per_hour": 100_001}, "max_per_hour"),
        ({"digest_mode": "MONTHLY"}, "digest_mode"),
        ({"minimum_priority": "low"}, "minimum_priority"),
        ({"channels": {"SMS": "no"}}, "channels"),
        ({"types": ["COMMENT"]}, "types"),
        ({"batching": 1}, "batching"),
        ({"timezone": None}, "timezone"),
        ({"user_id": " "}, "user_id"),
        ({"updated_at": -1}, "updated_at"),
        ({"colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_validate_names_each_problem(patch, fragment):
    problems = validate({**defaults("u"), **patch})
    assert len(problems) == 1, problems
    assert fragment in problems[0]


def test_validate_reports_every_problem_and_rejects_a_non_object():
    assert len(validate({"digest_day": 9, "max_batch_size": 0, "x": 1})) == 3
    assert validate([]) == ["preferences must be a JSON object"]


def test_zone_falls_back_to_utc():
    assert zone({"timezone": "Asia/Kolkata"}).key == "Asia/Kolkata"
    assert zone({"timezone": "Nowhere/Special"}).key == "UTC"
    assert zone({"timezone": "localtime"}).key == "UTC"
    assert zone(None).key == "UTC" and zone({"timezone": None}).key == "UTC"


@given(st.integers(0, 23), st.integers(0, 59))
def test_parse_hhmm_reads_every_valid_time(hour, minute):
    assert parse_hhmm(f"{hour:02d}:{minute:02d}") == hour * 60 + minute


@pytest.mark.parametrize("text", ["24:00", "7:00", "07:5", "07:60", "0700", " 07:00", "07:00 ", None, 700])
def test_parse_hhmm_rejects_anything_else(text):
    assert parse_hhmm(text) is None


def test_local_ms_moves_a_spring_forward_gap_to_the_transition():
    # Berlin 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    day = date(2026, 3, 29)
    assert local_ms(BERLIN, day, 1 * 60 + 59) == utc_ms(2026, 3, 29, 0, 59)
    for minute in (120, 150, 179, 180):
        assert local_ms(BERLIN, day, minute) == utc_ms(2026, 3, 29, 1, 0)
    assert local_ms(BERLIN, day, 181) == utc_ms(2026, 3, 29, 1, 1)


def test_local_ms_takes_the_first_occurrence_of_a_repeated_time_unless_asked():
    # Berlin 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC.
    day = date(2026, 10, 25)
    assert local_ms(BERLIN, day, 150) == utc_ms(2026, 10, 25, 0, 30)
    assert local_ms(BERLIN, day, 150, fold=1) == utc_ms(2026, 10, 25, 1, 30)
    assert local_ms(BERLIN, day, 180) == utc_ms(2026, 10, 25, 2, 0)


@given(
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Apia"]),
    st.dates(date(2010, 1, 1), date(2030, 12, 31)),
    st.integers(0, 24 * 60 - 2),
)
def test_local_ms_is_non_decreasing_and_lands_on_its_wall_time_or_after_a_gap(name, day, minute):
    tz = ZoneInfo(name)
    at, later = local_ms(tz, day, minute), local_ms(tz, day, minute + 1)
    assert at <= later
    wall = to_local(tz, at).replace(tzinfo=None)
    assert wall >= datetime(day.year, day.month, day.day, minute // 60, minute % 60)
    if wall != datetime(day.year, day.month, day.day, minute // 60, minute % 60):
        # Only in a gap, and then at its far edge: the instant before shows a wall time before the asked one.
        before = to_local(tz, at - 1).replace(tzinfo=None)
        assert before < datetime(day.year, day.month, day.day, minute // 60, minute % 60)


# -- a bad stored record never stops the pipeline -------------------------------------------------

BAD_VALUES = {
    "timezone": ["Mars/Olympus", "", 5, ["UTC"], "../../etc/passwd", "Europe/Berlin\x00", "x" * 300],
    "channels": [["SMS"], {"SMS": "no", "PUSH": False}, "off", 1],
    "types": [["COMMENT"], {"COMMENT": 0}, 3],
    "minimum_priority": ["low", ["LOW"], {"p": 1}, 7],
    "quiet_hours": [{"start": "25:00", "end": "07:00"}, {"start": "22:00"}, "22:00-07:00", ["22:00", "07:00"], 1,
                    {"start": ["x"], "end": {}}],
    "dnd": [{"day": 0}, 5, "mon", [{"day": 9, "start": "07:00", "end": "09:00"}], [3], [{"day": [1], "start": 1}]],
    "digest_mode": ["MONTHLY", ["DAILY"], 0],
    "digest_time": ["9am", ["09:00"], {"h": 9}, 900],
    "digest_day": [9, -1, "mon", [1], 1.5, True],
    "batching": ["yes", 2, [True]],
    "batch_window_s": [-5, 0, 86_401, 1.5, "30", [30]],
    "max_batch_size": [-1, 0, 1_001, "50", 2.5, {}],
    "max_per_hour": [-1, 0, "10", 1.5, [10]],
    "updated_at": [-1, "yesterday", [1], 1.5],
}


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in BAD_VALUES.items() for v in vs])
def test_effective_replaces_an_invalid_field_with_its_default_and_validate_names_it(field, value):
    problems = validate_fields({field: value})
    assert list(problems) == [field], problems
    assert validate({field: value})[0].startswith(f"{field} ")
    prefs = effective({field: value, "digest_mode": "DAILY"} if field != "digest_mode" else {field: value}, "u")
    if field in ("channels", "types", "dnd") and isinstance(value, (dict, list)):
        assert validate_fields({field: prefs[field]}) == {}, "only the valid entries are kept"
    else:
        assert prefs[field] == defaults("u")[field]


def test_effective_keeps_the_valid_entries_of_a_partly_invalid_map_or_list():
    prefs = effective({"channels": {"SMS": False, "PUSH": "no"}, "types": {"COMMENT": False, "X": 1},
                       "dnd": [{"day": 0, "start": "07:00", "end": "09:00"}, {"day": 9}]}, "u")
    assert prefs["channels"] == {"SMS": False} and prefs["types"] == {"COMMENT": False}
    assert prefs["dnd"] == [{"day": 0, "start": "07:00", "end": "09:00"}]
    assert effective("not a dict", "u") == defaults("u")  # type: ignore[arg-type]


def test_validate_fields_maps_each_field_to_its_problem():
    assert validate_fields(defaults("u")) == {}
    problems = validate_fields({"timezone": "Mars/Olympus", "max_batch_size": -1, "colour": "blue"})
    assert problems == {"timezone": "'Mars/Olympus' is not a known IANA time zone",
                        "max_batch_size": "must be a whole number from 1 to 1000",
                        "colour": "unknown key 'colour'"}
    assert validate_fields([]) == {"preferences": "must be a JSON object"}


def test_every_schema_field_has_a_check():
    from agents.preferences import _CHECKS

    assert set(_CHECKS) == set(defaults("u"))


def test_the_accessors_read_a_raw_malformed_record_leniently():
    raw = {"batch_window_s": -5, "max_batch_size": -1, "max_per_hour": "10", "timezone": ["x"],
           "channels": ["SMS"], "types": "none", "minimum_priority": ["HIGH"]}
    assert (batch_window_s(raw), max_batch_size(raw), max_per_hour(raw)) == (30, 50, None)
    assert zone(raw).key == "UTC" and zone({"timezone": "Mars/Olympus"}).key == "UTC"
    assert allows_channel(raw, "SMS") and allows_type(raw, "COMMENT") and meets_minimum(raw, "LOW")
    assert (batch_window_s({"batch_window_s": 60}), max_batch_size({"max_batch_size": 7}),
            max_per_hour({"max_per_hour": 5})) == (60, 7, 5)


def test_a_record_from_a_newer_schema_may_pass_with_its_unknown_fields_ignored():
    record = {**defaults("u"), "colour": "blue"}
    assert validate(record) == ["unknown key 'colour'"]
    assert validate(record, ignore_unknown=True) == [] and validate_fields(record, ignore_unknown=True) == {}
    assert validate({**record, "max_batch_size": 0}, ignore_unknown=True)[0].startswith("max_batch_size ")
