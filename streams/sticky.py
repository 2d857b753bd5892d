"""A worker's last partition assignment, kept on its own disk, so that after a restart it asks for the same
partitions back and finds their states already in its RocksDB files.

Faust's assignor is sticky only on what each member reports it held, and it keeps that in memory: a
worker killed and started again reports nothing, the assignment can move, and each worker then replays
from the changelog the whole state of the partitions it was not holding (see BENCHMARKS.md for what that
costs with a million users). Standby replicas avoid that replay too, but cost every worker a read and a
write of the others' changes all the time. The file is written after every assignment and read once when the app is built; a stale
or foreign one is harmless: the assignor drops partitions claimed twice or beyond a member's share.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from faust.assignor.client_assignment import ClientAssignment

from streams import faust_adapter

log = logging.getLogger("herald.sticky")
FILE = "herald-assignment.json"


def _as_dict(assignment: ClientAssignment) -> dict[str, dict[str, list[int]]]:
    return {"actives": {t: sorted(p) for t, p in assignment.actives.items()},
            "standbys": {t: sorted(p) for t, p in assignment.standbys.items()}}


def load(path: Path) -> ClientAssignment | None:
    """The assignment saved at ``path``; None when there is none or it cannot be read."""
    try:
        saved = json.loads(path.read_text())
        return ClientAssignment(actives={str(t): [int(p) for p in ps] for t, ps in saved["actives"].items()},
                                standbys={str(t): [int(p) for p in ps] for t, ps in saved["standbys"].items()})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the saved partition assignment %s: %s", path, exc)
        return None


def save(path: Path, assignment: ClientAssignment) -> None:
    """Write ``assignment`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_as_dict(assignment)))
    os.replace(tmp, path)


def keep_assignment(app: Any, folder: Path) -> Callable[..., Awaitable[None]]:
    """Start ``app``'s assignor from the assignment saved in ``folder`` and save every new one there (the
    receiver connected to ``on_partitions_assigned`` is returned)."""
    path = Path(folder) / FILE
    previous = load(path)
    if previous is not None:
        faust_adapter.set_assignor_assignment(app, previous)  # what it reports when the worker joins the group

    async def remember(*args: object, **kwargs: object) -> None:  # noqa: ARG001
        try:
            save(path, faust_adapter.assignor_assignment(app))
        except OSError as exc:  # never worth stopping a worker for: a restart only replays more
            log.warning("could not save the partition assignment to %s: %s", path, exc)

    app.on_partitions_assigned.connect(remember)
    return remember
