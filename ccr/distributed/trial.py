"""One trial of `ccr sweep`, as it runs in its Ray worker: the study with the trial's parameters, written under
STORAGE/runs/<name>; a trial whose study finished before the driver died is reported, not run again, and one
whose config or inputs were refused is not retried within the same `ccr sweep`
(the driver's side: ccr.distributed.tune).
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from ccr.config.files import set_path
from ccr.distributed.sweep_spec import apply_params, trial_name, trial_params
from ccr.io.storage import Storage
from ccr.measure.results import flat_metrics
from ccr.study.configure import build_config


def run_trial(config: dict[str, Any], base_tree: dict[str, Any], runs: str, threads: int = 1,
              pretrained: str | None = None, cases: dict[str, dict[str, dict[str, Any]]] | None = None,
              shared: str | None = None, attempt: str = "") -> None:
    """Tune function trainable: one study with the trial's parameters.

    Everything the trial writes goes to `runs/<name>` in the sweep's storage, from whichever node runs
    it; a retried trial (on any node) resumes from its last task checkpointed there. `threads`: the
    CPUs the trial was granted, used as torch's intra-op threads unless the config fixes them. `cases`:
    the sweep's named axes (what each case name among the parameters sets). `shared`: where shared caches go
    (data.image_cache=shared). `attempt`: this `ccr sweep` invocation's id: a trial that could not read its
    inputs is not run again within it (Tune's retries), only by a later `ccr sweep` (after the inputs are fixed).
    """
    import time

    import ray
    from ray import tune

    from ccr.distributed.runner import make_study, run_study

    entered = time.time()
    params = trial_params(config)
    store = Storage(runs).child(trial_name(params))
    ctx = tune.get_context()
    tree = apply_params(base_tree, params, cases or {})
    if pretrained and not (tree.get("tasks") or {}).get("pretrain_cache"):  # shared by the sweep's trials
        set_path(tree, "tasks.pretrain_cache", pretrained)
    shared_cache(tree, shared)
    cfg = build_config(tree)
    failed = _input_failure(store, attempt)
    if failed:  # Tune's retry of a trial whose config or inputs were refused: the same error, at once
        from ccr.errors import DataError, input_error

        raise input_error(failed.get("kind"), DataError)(
            f"not retried (a retry meets the same error, met on node {failed['node']}): {failed['error']}")
    done = _complete_results(store, cfg)
    if done is not None:  # finished before the driver died (Tune had not recorded it yet): not run again
        tune.report(flat_metrics(done))
        return
    node = ray.get_runtime_context().get_node_id()
    store.append_line("starts.log", f"{ctx.get_trial_id()} {node}")  # one line per study actually started
    trial = {"params": params, "trial_id": ctx.get_trial_id(), "node_id": node}
    store.write_json("trial.json", trial)
    try:
        study = make_study(cfg, store, progress=False, threads=threads)
        with study.logging_to_store():
            res = run_study(study)
        store.delete("error.txt")
        store.delete("input_error.json")
    except Exception as e:
        from ccr.errors import INPUT_ERRORS, DivergedError

        store.write_text("error.txt", ("diverged: " if isinstance(e, DivergedError) else "") + traceback.format_exc())
        if isinstance(e, INPUT_ERRORS) and attempt:  # the inputs: retrying will not help
            store.write_json("input_error.json", {"attempt": attempt, "node": node, "kind": type(e).__name__,
                                                  "error": str(e)[:2000]})
        raise
    prov = res["provenance"]  # the study's own time: the rest is the trial's overhead (bench/sweep_efficiency.py)
    store.write_json("trial.json", {**trial, "timing": {
        "entered": entered, "study_seconds": prov["finished"] - prov["started"],
        "done": time.time()}})
    tune.report(flat_metrics(res))


def shared_cache(tree: dict[str, Any], shared: str | None) -> None:
    """data.image_cache=shared without data.shared_cache: the sweep's own storage holds the shared cache."""
    data = tree.get("data") or {}
    if shared and data.get("image_cache") == "shared" and not data.get("shared_cache"):
        set_path(tree, "data.shared_cache", shared)


def _input_failure(store: Storage, attempt: str) -> dict[str, Any] | None:
    """The input error this trial met earlier in this same `ccr sweep` (None: none, or in another invocation)."""
    if not attempt:
        return None
    try:
        failed = store.read_json("input_error.json")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return failed if isinstance(failed, dict) and failed.get("attempt") == attempt else None


def _complete_results(store: Storage, cfg) -> dict[str, Any] | None:
    from ccr.config.schema import to_dict
    from ccr.io.redact import redact_tree
    from ccr.models import resolve_model
    from ccr.study.resume import config_differences

    try:
        res = store.read_json("results.json")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if res.get("status") == "complete" and not config_differences(res["config"],
                                                                  redact_tree(to_dict(resolve_model(cfg)))):
        return res
    return None
