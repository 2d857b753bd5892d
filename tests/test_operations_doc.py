"""docs/operations.md names only what exists: its sections are the ones the operations guide must have, and
every setting, worker metric, file and name it points to is in the code."""
from __future__ import annotations

import dataclasses
import re

from herald.settings import Settings
from infra.common import REPO_ROOT

GUIDE = (REPO_ROOT / "docs" / "operations.md").read_text()


def section(title: str) -> str:
    return GUIDE.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_guide_has_the_sections_an_operator_needs():
    titles = re.findall(r"^## (.+)$", GUIDE, flags=re.M)
    for wanted in ("Running on an existing, secured Kafka cluster", "Sizing partitions and workers",
                   "Upgrading a worker without losing state", "Metrics and alerts"):
        assert wanted in titles


def test_every_setting_it_names_is_declared():
    declared = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    named = set(re.findall(r"HERALD_[A-Z0-9_]+", GUIDE))
    assert named and named <= declared, named - declared


def test_the_worker_table_lists_every_worker_metric_and_no_other(tmp_path):
    import asyncio

    from streams.worker import create_worker

    async def exported() -> set[str]:
        app = create_worker(Settings.from_env(app_id="test-ops-doc", data_dir=str(tmp_path)), register=False)
        return {family.name for family in app.herald_pipeline.metrics.registry.collect()}

    names = asyncio.run(exported())
    table = GUIDE.split("**Worker**", 1)[1].split("**Sinks**", 1)[0]
    documented = {re.sub(r"(_total)?(\{.*)?$", "", m) for m in re.findall(r"`(herald_worker_[a-z_]+[^`]*)`", table)}
    assert documented == names


def test_the_files_and_names_it_points_to_exist():
    from agents import state
    from streams import sticky

    for path in set(re.findall(r"`((?:agents|streams|herald|infra|api|sinks)/[\w/.]+\.(?:py|json|yml))`", GUIDE)):
        assert (REPO_ROOT / path).is_file(), path
    upgrading = section("Upgrading a worker without losing state")
    assert f"`{sticky.FILE}`" in upgrading
    assert "`VERSION`" in upgrading and hasattr(state, "VERSION") and hasattr(state, "migrate_state")


def test_the_sizing_section_sends_to_the_benchmarks_and_quotes_no_figure():
    sizing = section("Sizing partitions and workers")
    assert "BENCHMARKS.md" in sizing
    assert not re.search(r"\d[\d,.]*\s*(events/s|digests/s|req/s|[KMG]B|ms|s)\b", sizing)
