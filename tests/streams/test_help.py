"""Every command's --help teaches by example and lists the settings."""
import subprocess
import sys

from infra.common import REPO_ROOT


def test_help_teaches_by_example():
    for command in ("produce", "tail", "replay", "rebuild", "up"):
        result = subprocess.run([sys.executable, "-m", "streams.cli", command, "--help"], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 0 and "example" in result.stdout
    top = subprocess.run([sys.executable, "-m", "streams.cli", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "HERALD_KAFKA_BOOTSTRAP" in top.stdout and "herald up" in top.stdout


def test_the_readme_lists_the_operator_commands_and_each_one_parses():
    """"Where to look next" names the operator commands of issue #16, written as the parser takes them."""
    import re
    import shlex

    from streams.cli import _parser

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Where to look next", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for block in re.findall(r"```\n(.*?)```", section, flags=re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("herald ")]
    for wanted in (["replay", "--shadow", "--set", "HERALD_BATCH_WINDOW_S=300", "--from"], ["rebuild", "inbox"],
                   ["replay", "--dlq"], ["status"]):
        assert any(c[:len(wanted)] == wanted for c in commands), wanted
    shadow = next(c for c in commands if c[:2] == ["replay", "--shadow"])
    assert "--until" in shadow
    for argv in (c for c in commands if "--help" not in c):
        _parser().parse_args(argv)  # exits (SystemExit) on a command the CLI does not take
