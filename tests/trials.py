"""Watching a sweep's storage for the moment to lose a node (the CI test and scripts/cluster_check.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ccr.io.storage import Storage


def checkpointed_trial_on(runs: Storage, node_id: str) -> str | None:
    """A trial running on `node_id` that has checkpointed its first task and not finished, if any."""
    files = runs.files() if runs.exists() else []
    for f in files:
        if f.endswith("/trial.json") and runs.read_json(f)["node_id"] == node_id:
            name = f.split("/")[0]
            finished = runs.is_file(f"{name}/results.json") and \
                runs.read_json(f"{name}/results.json")["status"] == "complete"
            if any(c.startswith(f"{name}/checkpoints/") and c.endswith(".pt") for c in files) and not finished:
                return name
    return None


def wait_for_checkpointed_trial(runs: Storage, node_id: str, timeout: float, poll: float,
                                still_running: Callable[[], bool] = lambda: True) -> str | None:
    deadline = time.time() + timeout
    while time.time() < deadline and still_running():
        name = checkpointed_trial_on(runs, node_id)
        if name:
            return name
        time.sleep(poll)
    return None
