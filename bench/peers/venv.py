"""The benchmark peers' own virtual environment, beside Herald's.

Quix Streams pins an older confluent-kafka than Herald's, so the peer runs in ``$HERALD_HOME/bench/quix-venv``
(``HERALD_HOME`` defaults to ``<repo>/.herald``), made with ``python -m venv`` and the exact versions of
``bench/peers/requirements.txt``. ``ensure_venv()`` is idempotent: a venv whose recorded requirements
hash matches the file is used as it is (a second or so); a changed file reinstalls; a half-made venv is
made again. Two processes asking at once wait for each other (a file lock).

    python -m bench.peers.venv        # make or check it, print its interpreter
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MARKER = ".herald-requirements"


class VenvError(RuntimeError):
    """The peer's environment could not be made. The message says which step failed and what to do."""


def venv_dir() -> Path:
    from infra.common import subdir

    return subdir("bench") / "quix-venv"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _fingerprint(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()


def ensure_venv(requirements: Path = REQUIREMENTS, venv: Path | None = None, progress: bool = True) -> Path:
    """Make (or reuse) the peer's virtual environment with ``requirements`` installed; return its folder."""
    venv = venv or venv_dir()
    say = (lambda line: print(f"quix-venv: {line}", file=sys.stderr, flush=True)) if progress else (lambda line: None)
    wanted = _fingerprint(requirements)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / MARKER
        if python_of(venv).exists() and marker.exists() and marker.read_text() == wanted:
            say(f"ready at {venv} (requirements unchanged)")
            return venv
        started = time.monotonic()
        if venv.exists() and not python_of(venv).exists():
            say(f"{venv} is incomplete: making it again")
            shutil.rmtree(venv)
        if not venv.exists():
            say(f"creating {venv} with {sys.executable} -m venv")
            _run([sys.executable, "-m", "venv", str(venv)], "python -m venv",
                 "install the venv module (Debian: apt-get install python3-venv)")
        pins = [line.strip() for line in requirements.read_text().splitlines() if line.strip() and not line.startswith("#")]
        say(f"installing {len(pins)} pinned packages ({', '.join(pins[:3])}, ...) from {requirements.name}")
        _run([str(python_of(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
              "-r", str(requirements)], "pip install", "check that PyPI is reachable, or delete the folder and retry")
        marker.write_text(wanted)
        say(f"ready at {venv} in {time.monotonic() - started:.0f} s")
        return venv


def _run(cmd: list[str], step: str, hint: str) -> None:
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise VenvError(f"{step} failed with exit code {done.returncode}: {hint}\n{tail}")


if __name__ == "__main__":
    print(python_of(ensure_venv()))
