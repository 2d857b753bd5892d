"""docs/reference.md, docs/cli.md and docs/settings.md say what the code does: their generated parts are
exactly what ``docs/generate.py`` makes from the code now, and the generator refuses to make them while
the code has a topic, dead-letter header or reason code it does not describe."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from herald.settings import Settings
from herald.topics import SPECS
from infra.common import REPO_ROOT

REGENERATE = ".venv/bin/python docs/generate.py"


def generator():
    spec = importlib.util.spec_from_file_location("docs_generate", REPO_ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return generator()


@pytest.mark.parametrize("page", ["reference.md", "cli.md", "settings.md"])
def test_the_committed_page_is_what_the_code_makes(gen, page):
    made = gen.render(page)
    assert made == (REPO_ROOT / "docs" / page).read_text(), f"docs/{page} is out of date: run `{REGENERATE}`"


def test_every_setting_topic_schema_and_command_is_in_the_reference():
    settings_md = (REPO_ROOT / "docs" / "settings.md").read_text()
    for f in fields(Settings):
        assert f"`{f.metadata['env']}`" in settings_md
    reference = (REPO_ROOT / "docs" / "reference.md").read_text()
    for spec in SPECS:
        assert f"`herald.{spec.name}`" in reference or spec.name.startswith("delivery.")
        if spec.schema:
            assert f"### `herald.{spec.schema}`" in reference
    cli = (REPO_ROOT / "docs" / "cli.md").read_text()
    for command in ("up", "down", "status", "worker", "sink", "api", "produce", "tail", "replay", "token", "bench"):
        assert f"### `herald {command}`" in cli
    assert "--dlq" in cli and "--from WHEN, --since WHEN" in cli


def test_the_reason_scan_finds_the_reasons_each_stage_raises(gen):
    codes = gen.reason_codes()
    assert "schemas/codec.py" in codes["SCHEMA_NOT_FOUND"] and "schemas/codec.py" in codes["INVALID_MAGIC_BYTE"]
    assert "agents/validate.py" in codes["VALIDATION"]
    assert "streams/worker.py" in codes["INTERNAL"]
    assert "sinks/runner.py" in codes["MAX_ATTEMPTS"] and "sinks/runner.py" in codes["IN_DOUBT"]
    assert {"REJECTED", "BAD_RESPONSE"} <= set(codes)  # `reason = "BAD_RESPONSE" if ... else "REJECTED"`
    assert not {"DEDUPLICATED", "ROUTED", "DEAD", "SENT"} & set(codes)  # decisions and statuses are not reasons


def test_a_new_reason_in_the_code_without_docs_stops_the_generator(gen, tmp_path):
    for folder in gen.SCANNED:
        (tmp_path / folder).mkdir()
    (tmp_path / "sinks" / "new.py").write_text('raise PermanentError("QUOTA_EXCEEDED", "over the quota")\n'
                                                 'self.intake.dead_letter(msg, "VALIDATION", "x", "ingest")\n')
    codes = gen.reason_codes(tmp_path)
    assert codes == {"QUOTA_EXCEEDED": ["sinks/new.py"], "VALIDATION": ["sinks/new.py"]}
    with pytest.raises(gen.Undocumented, match="describe QUOTA_EXCEEDED in docs/generate.py"):
        gen._check_same("reasons", set(codes) | set(gen.REASONS), set(gen.REASONS))
    with pytest.raises(gen.Undocumented, match="GONE described in docs/generate.py but not in the code"):
        gen._check_same("reasons", set(gen.REASONS), set(gen.REASONS) | {"GONE"})


def test_a_generated_part_is_replaced_and_the_hand_written_text_kept(gen):
    text = "intro\n<!-- BEGIN GENERATED: t -->\nold\n<!-- END GENERATED: t -->\noutro\n"
    assert gen.fill(text, "t", "new") == "intro\n<!-- BEGIN GENERATED: t -->\nnew\n<!-- END GENERATED: t -->\noutro\n"
    with pytest.raises(gen.Undocumented, match="no <!-- BEGIN GENERATED: other -->"):
        gen.fill(text, "other", "x")


def test_avro_types_read_as_words(gen):
    nested: list = []
    assert gen._avro_type(["null", {"type": "long", "logicalType": "timestamp-millis"}], nested) == \
        "null or long (timestamp-millis)"
    assert gen._avro_type({"type": "array", "items": {"type": "enum", "name": "C", "symbols": ["A", "B"]}}, nested) == \
        "array of enum C {A, B}"
    assert gen._avro_type({"type": "map", "values": "boolean"}, nested) == "map of boolean"
    assert gen._avro_type({"type": "record", "name": "W", "fields": []}, nested) == "record W" and nested[0]["name"] == "W"


def test_check_mode_exits_0_when_up_to_date():
    result = subprocess.run([sys.executable, "docs/generate.py", "--check"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_each_target_shows_its_value_and_comparison():
    from bench.targets import TARGETS

    for t in TARGETS:
        digits = re.sub(r"[^0-9]", "", t.shown.split("(")[0].split(" for ")[0].split(" at ")[0])
        assert digits == f"{t.value:.0f}", t  # the text shows the value the verdict uses
        assert t.shown.startswith({">=": "≥", "<=": "≤"}[t.comparison]) or t.figure == "digest_users", t
        assert t.met(t.value) and not t.met(t.value * (0.5 if t.comparison == ">=" else 2))


def test_the_readme_sends_users_to_the_projects_own_reference():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "CONTRACT.md" not in readme
    assert "docs/reference.md" in readme


def test_every_relative_link_of_the_docs_and_the_readme_leads_to_a_file():
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
