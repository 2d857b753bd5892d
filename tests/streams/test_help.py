"""Every command's --help teaches by example and lists the settings."""
import subprocess
import sys

from infra.common import REPO_ROOT


def test_help_teaches_by_example():
    for command in ("produce", "tail", "replay", "up"):
        result = subprocess.run([sys.executable, "-m", "streams.cli", command, "--help"], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 0 and "example" in result.stdout
    top = subprocess.run([sys.executable, "-m", "streams.cli", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "HERALD_KAFKA_BOOTSTRAP" in top.stdout and "herald up" in top.stdout
