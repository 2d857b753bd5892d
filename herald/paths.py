"""Where Herald keeps local state: one git-ignored folder (``HERALD_HOME``, default ``<repo>/.herald``)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The state folder, created when missing."""
    path = Path(os.environ.get("HERALD_HOME", REPO_ROOT / ".herald"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(*parts: str) -> Path:
    """A folder inside the state folder, created when missing."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
