"""`ccr sweep`: Ray Tune over studies. Each trial is one ccr study (trained through Ray Train when it has
several workers); trial outputs live under STORAGE/runs/<name from the trial's parameters>, the Tune
experiment under STORAGE/tune*, so an interrupted sweep restores and finished trials are not rerun.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any

from ccr.config import ConfigError, build_config, set_path
from ccr.distributed.sweep_spec import SweepSpec, load_spec, trial_name
from ccr.provenance import atomic_write_json

log = logging.getLogger(__name__)


def flat_metrics(res: dict[str, Any]) -> dict[str, float]:
    """results.json -> {'summary.avg_final_recall.t2i.1': ..., 'index_cost.total': ...} for Tune."""
    out = {}
    for q, by_d in res["summary"].items():
        for d, by_k in by_d.items():
            for k, v in by_k.items():
                out[f"summary.{q}.{d}.{k}"] = v
    out["rsum.avg_final"] = res["rsum"]["avg_final"]
    c = res["index_cost"]
    out.update({"index_cost.images_embedded": c["images_embedded"], "index_cost.captions_embedded":
                c["captions_embedded"], "index_cost.total": c["images_embedded"] + c["captions_embedded"]})
    return out


def run_trial(config: dict[str, Any], base_tree: dict[str, Any], runs_dir: str) -> None:
    """Tune function trainable: one study with the trial's parameters."""
    import copy

    import ray
    from ray import tune

    from ccr.distributed.train import run_distributed
    from ccr.study import Study

    params = dict(config)
    out = Path(runs_dir) / trial_name(params)
    out.mkdir(parents=True, exist_ok=True)
    ctx = tune.get_context()
    tree = copy.deepcopy(base_tree)
    for k, v in params.items():
        set_path(tree, k, v)
    cfg = build_config(tree)
    done = _complete_results(out, cfg)
    if done is not None:  # finished before the driver died (Tune had not recorded it yet): not run again
        tune.report(flat_metrics(done))
        return
    with open(out / "starts.log", "a") as f:  # one line per study actually started
        f.write(f"{ctx.get_trial_id()}\n")
    atomic_write_json(out / "trial.json", {"params": params, "trial_id": ctx.get_trial_id(),
                                           "node_id": ray.get_runtime_context().get_node_id()})
    try:
        if cfg.train.workers > 1 or cfg.train.use_ray:
            res = run_distributed(cfg, out, progress=False)
        else:
            res = Study(cfg, out, progress=False).run()
        (out / "error.txt").unlink(missing_ok=True)
    except Exception:
        (out / "error.txt").write_text(traceback.format_exc())
        raise
    tune.report(flat_metrics(res))


def _complete_results(out: Path, cfg) -> dict[str, Any] | None:
    from ccr.config import to_dict
    from ccr.study import _comparable

    try:
        res = json.loads((out / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if res.get("status") == "complete" and _comparable(res["config"]) == _comparable(to_dict(cfg)):
        return res
    return None


def _tune_space(spec: SweepSpec, cell: dict[str, Any] | None) -> dict[str, Any]:
    from ray import tune

    if spec.optuna is None:
        return {k: tune.grid_search(v) for k, v in spec.grid.items()}
    space: dict[str, Any] = dict(cell or {})
    for k, d in spec.optuna["space"].items():
        t = d["type"]
        space[k] = (tune.loguniform(d["low"], d["high"]) if t == "loguniform" else
                    tune.uniform(d["low"], d["high"]) if t == "uniform" else
                    tune.randint(d["low"], d["high"] + 1) if t == "int" else tune.choice(d["values"]))
    return space


def concurrency(spec: SweepSpec) -> int:
    """Trials at once: what the cluster's CPUs (and GPUs) allow, counting each trial's Train workers."""
    import ray

    if spec.max_concurrent_trials:
        return int(spec.max_concurrent_trials)
    cfg = spec.config_for(spec.cells()[0] if spec.grid else {})
    per_trial = spec.cpus_per_trial + (cfg.train.workers * cfg.train.cpus_per_worker
                                       if cfg.train.workers > 1 or cfg.train.use_ray else 0)
    res = ray.cluster_resources()
    n = math.floor(res.get("CPU", 1) / max(per_trial, 1e-9))
    if spec.gpus_per_trial:
        n = min(n, math.floor(res.get("GPU", 0) / spec.gpus_per_trial))
    return max(1, n)


def _tuner(spec: SweepSpec, storage: Path, name: str, cell: dict[str, Any] | None, resume: bool):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_tree=spec.base_tree, runs_dir=str(storage / "runs")),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    path = storage / name
    if resume and tune.Tuner.can_restore(str(path)):
        log.info("restoring %s", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    search_alg, metric, mode, samples = None, None, None, 1
    if spec.optuna:
        from ray.tune.search.optuna import OptunaSearch

        metric, mode = spec.optuna["metric"], spec.optuna["mode"]
        search_alg = OptunaSearch(metric=metric, mode=mode, seed=spec.config_for(cell or {}).seed)
        samples = int(spec.optuna.get("num_samples", 8))
    return tune.Tuner(
        trainable, param_space=_tune_space(spec, cell),
        tune_config=tune.TuneConfig(search_alg=search_alg, metric=metric, mode=mode, num_samples=samples,
                                    max_concurrent_trials=concurrency(spec),
                                    trial_name_creator=lambda t: trial_name(t.config)[:100],
                                    trial_dirname_creator=lambda t: f"{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures), verbose=0),
    )


def run_sweep(path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
              resume: bool = False) -> int:
    """Run (or resume) a sweep; returns a process exit code (0 even when some trials failed)."""
    import ray

    spec = load_spec(path, overrides)  # every config error before Ray starts
    storage = Path(out or Path("runs") / "sweeps" / spec.name).resolve()
    same = {"sweep": Path(path).read_text(), "overrides": list(overrides or [])}
    if (storage / "sweep.yaml").exists() and not resume:
        try:
            before = json.loads((storage / "sweep_input.json").read_text())
        except (OSError, json.JSONDecodeError):
            before = None
        if before != same:
            raise ConfigError(f"{storage} already holds a different sweep: pass --resume to continue it anyway, "
                              "or choose another --out")
        log.info("%s holds this same sweep: resuming it (finished trials are not run again)", storage)
        resume = True
    storage.mkdir(parents=True, exist_ok=True)
    (storage / "sweep.yaml").write_text(same["sweep"])
    atomic_write_json(storage / "sweep_input.json", same)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    cells = spec.cells() if (spec.optuna and spec.grid) else [None]
    summary: dict[str, Any] = {"trials": {}, "failed": {}, "best": {}}
    for cell in cells:
        name = "tune" if cell is None else "tune-" + trial_name(cell)[:80]
        grid = _tuner(spec, storage, name, cell, resume).fit()
        for r in grid:
            key = trial_name({k: r.config[k] for k in r.config}) if r.config else "?"
            if r.error:
                summary["failed"][key] = str(r.error)[-500:]
            else:
                summary["trials"][key] = r.metrics.get(spec.optuna["metric"]) if spec.optuna else "complete"
        if spec.optuna:
            try:
                best = grid.get_best_result(spec.optuna["metric"], spec.optuna["mode"])
                metric = spec.optuna["metric"]
                summary["best"][name] = {"config": best.config, metric: best.metrics[metric]}
            except RuntimeError as e:
                summary["best"][name] = {"error": str(e)}
    atomic_write_json(storage / "sweep_status.json", summary)
    if spec.optuna:
        atomic_write_json(storage / "best.json", summary["best"])
    print(json.dumps({"storage": str(storage), "trials": len(summary["trials"]), "failed": len(summary["failed"])}))
    return 0
