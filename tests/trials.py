"""Watching a sweep's storage for the moment to lose a node (the CI test and scripts/cluster_check.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ccr.io.storage import Storage


def tasks_left(runs: Storage, name: str) -> int | None:
    """How many tasks trial `name` has still to learn, from the partial results written with each checkpoint
    (None before its first checkpoint's results)."""
    try:
        res = runs.read_json(f"{name}/results.json")
    except (FileNotFoundError, ValueError):
        return None
    if res.get("status") == "complete":
        return 0
    return len(res.get("task_order", [])) - int(res.get("tasks_done", 0))


def checkpointed_trial_on(runs: Storage, node_id: str, min_left: int = 1) -> str | None:
    """A trial running on `node_id` that has checkpointed a task and has at least `min_left` tasks still to
    learn, if any: a trial lost then must resume from its checkpoint (one nearer its end may finish between
    this look and the loss)."""
    files = runs.files() if runs.exists() else []
    for f in files:
        if f.endswith("/trial.json") and runs.read_json(f)["node_id"] == node_id:
            name = f.split("/")[0]
            if not any(c.startswith(f"{name}/checkpoints/") and c.endswith(".pt") for c in files):
                continue
            left = tasks_left(runs, name)
            if left is not None and left >= min_left:
                return name
    return None


def wait_for_checkpointed_trial(runs: Storage, node_id: str, timeout: float, poll: float,
                                still_running: Callable[[], bool] = lambda: True, min_left: int = 1) -> str | None:
    deadline = time.time() + timeout
    while time.time() < deadline and still_running():
        name = checkpointed_trial_on(runs, node_id, min_left)
        if name:
            return name
        time.sleep(poll)
    return None
