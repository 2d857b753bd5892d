"""The benchmark commands' help and the peer venv's reuse rule, with no server."""
from __future__ import annotations

import sys

import pytest

from bench import passthrough, workload
from bench.peers import quix_peer, venv


@pytest.mark.parametrize("module, words", [
    (workload, ["--events", "--users", "--seed", "--duplicate-share", "--preferences-share"]),
    (passthrough, ["--events", "--source", "raw ceiling"]),
    (quix_peer, ["--events", "--source", "--window-s", "Quix Streams"]),
])
def test_help_documents_the_options(module, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in words:
        assert word in text


def test_peer_module_imports_no_herald_code_at_top_level():
    source = quix_peer.PEER_SCRIPT.read_text()
    top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1] in ("__future__", "argparse", "dataclasses", "hashlib", "json", "sys", "time", "pathlib",
                                   "typing") for line in top), top


def test_ensure_venv_reuses_a_venv_made_for_the_same_requirements(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing\n")
    made = tmp_path / "quix-venv"
    (made / "bin").mkdir(parents=True)
    (made / "bin" / "python").symlink_to(sys.executable)
    (made / venv.MARKER).write_text(venv._fingerprint(requirements))
    monkeypatch.setattr(venv, "_run", lambda *a: pytest.fail(f"ran {a[0]} for an up-to-date venv"))
    assert venv.ensure_venv(requirements, made, progress=False) == made

    requirements.write_text("# changed\n")
    ran = []
    monkeypatch.setattr(venv, "_run", lambda cmd, step, hint: ran.append(step))
    assert venv.ensure_venv(requirements, made, progress=False) == made
    assert ran == ["pip install"]
    assert (made / venv.MARKER).read_text() == venv._fingerprint(requirements)


def test_requirements_pin_every_package_exactly():
    lines = [line.strip() for line in venv.REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines and all("==" in line and not any(c in line for c in "<>~!") for line in lines), lines
    assert any(line.startswith("quixstreams==") for line in lines)


def test_the_rocksdb_memory_bench_measures_each_variant(tmp_path):
    from bench import rocksdb_memory

    for variant in rocksdb_memory.VARIANTS:
        figures = rocksdb_memory.run_variant(variant, tmp_path / variant, partitions=2, values=2_000, value_bytes=100)
        assert figures["variant"] == variant and figures["after_reads_mb"] >= 0 and figures["seconds"] >= 0
        assert (tmp_path / variant / "states-1").is_dir()


def test_the_encode_bench_compares_both_writers_on_each_output(capsys):
    from bench import encode

    encode.main(["--records", "200", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in lines] == ["decision", "single request", "digest request"]
    assert all("fastavro" in line and "herald" in line for line in lines)


def test_the_policy_path_bench_runs_both_paths_to_the_same_records(capsys):
    from bench import policy_path

    policy_path.main(["--events", "2000", "--users", "300", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("µs/event" in line and "µs/user" in line for line in lines)
    assert lines[0].startswith("every state copied") and lines[1].startswith("as the worker runs")


def test_the_digest_release_bench_sends_every_user_one_digest(capsys):
    from bench import digest_release

    digest_release.main(["--users", "300", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "µs/user" in out and "300 users, 600 records" in out


def test_the_digest_release_bench_releases_with_the_worker_s_garbage_collector_and_restores_it(monkeypatch, capsys):
    import gc

    from bench import digest_release

    before, seen = gc.get_threshold(), []
    monkeypatch.setattr(digest_release, "tune_gc", lambda: gc.set_threshold(12_345, 11, 12))
    real = digest_release.release
    monkeypatch.setattr(digest_release, "release", lambda *a: seen.append(gc.get_threshold()) or real(*a))
    digest_release.main(["--users", "20", "--rounds", "2"])
    assert seen == [(12_345, 11, 12)] * 2 and gc.get_threshold() == before


def test_the_digest_release_bench_fails_when_a_user_gets_no_digest(monkeypatch):
    from bench import digest_release

    monkeypatch.setattr(digest_release.policy, "on_tick", lambda state, *a, **k: digest_release.policy.Outcome(state))
    with pytest.raises(SystemExit, match="a digest request and a decision per user"):
        digest_release.main(["--users", "50", "--rounds", "1"])


def test_the_digest_release_bench_compares_with_a_baseline_checkout(capsys, tmp_path):
    from bench import digest_release

    digest_release.main(["--users", "100", "--rounds", "1", "--pairs", "2", "--baseline", str(digest_release.REPO)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "this"]
    assert all("2 rounds, 100 users" in line for line in lines)
    with pytest.raises(SystemExit, match="no bench/digest_release.py"):
        digest_release.main(["--baseline", str(tmp_path)])


def test_the_digest_release_bench_reads_rounds_and_instruction_counts(monkeypatch):
    from bench import digest_release

    assert digest_release.rounds_of("digest release 98.1 µs/user (best of 3; per round: 120.5, 98.1, 99.0)") == [
        120.5, 98.1, 99.0]
    assert digest_release.instructions_of("==81== \n==81== I   refs:      5,106,782,382\n") == 5_106_782_382
    with pytest.raises(ValueError):
        digest_release.instructions_of("valgrind: command not found")
    monkeypatch.setattr(digest_release.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="needs valgrind"):
        digest_release.main(["--users", "10", "--instructions"])
