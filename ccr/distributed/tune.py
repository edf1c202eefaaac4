"""`ccr sweep`: Ray Tune over studies. Each trial is one ccr study (trained through Ray Train when it has
several workers); trial outputs live under STORAGE/runs/<name from the trial's parameters>, the Tune
experiment under STORAGE/tune*, so an interrupted sweep restores and finished trials are not rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from ccr.config.schema import ConfigError, to_dict
from ccr.distributed.cluster import check_can_ever_run, init_ray
from ccr.distributed.sweep_spec import SweepSpec, apply_params, load_spec, trial_name, trial_params
from ccr.distributed.trial import run_trial, shared_cache
from ccr.io.locks import exclusive
from ccr.io.redact import redact
from ccr.io.storage import Storage, open_storage
from ccr.study.configure import build_config

log = logging.getLogger(__name__)


def check_inputs(spec: SweepSpec, shared: str) -> int:
    """Stage and load, in the driver, the dataset of every distinct data config the sweep's cells use (built-in
    real-data kinds): a dataset that cannot be read stops the sweep before any trial starts, and the node-local
    caches (and a shared image cache) are made once, before the trials need them. Returns how many were loaded.
    The generated benchmark has nothing to read: a sweep of it imports no dataset loader or model code here (the
    driver's start-up; each trial imports them anyway)."""
    seen, loaded = set(), 0
    for cell in spec.cells() or [{}]:
        tree = apply_params(spec.base_tree, cell, spec.cases)
        shared_cache(tree, shared)
        cfg = build_config(tree)
        if cfg.data.kind not in ("karpathy", "precomp", "visual_genome"):  # generated: nothing to read
            continue
        key = json.dumps([to_dict(cfg.data), cfg.model.pretrained, cfg.model.image.image_size], sort_keys=True)
        if key not in seen:
            from ccr.data import load_dataset
            from ccr.models import pixels_for

            seen.add(key)
            load_dataset(cfg, pixels_for(cfg))
            loaded += 1
    return loaded


def _tune_space(spec: SweepSpec, cell: dict[str, Any] | None) -> dict[str, Any]:
    from ray import tune

    if spec.optuna is None:  # the distinct studies, one trial each (see SweepSpec.cells)
        return {"cell": tune.grid_search(spec.launch_order())}
    space: dict[str, Any] = dict(cell or {})
    for k, d in spec.optuna["space"].items():
        t = d["type"]
        space[k] = (tune.loguniform(d["low"], d["high"]) if t == "loguniform" else
                    tune.uniform(d["low"], d["high"]) if t == "uniform" else
                    tune.randint(d["low"], d["high"] + 1) if t == "int" else tune.choice(d["values"]))
    return space


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What one trial asks Ray for. Tune queues the trials that do not fit; on an autoscaling cluster the
    queued requests are the demand that adds nodes. A trial training through Ray Train holds only its
    driver here: its workers request their own resources (a placement group) from Ray Train."""
    return {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}


def _count_callbacks_by_name(callbacks: list[Any] | None) -> dict[str, int]:
    """Ray's usage tag of a run's callbacks, counted as Ray counts them (by class name), without importing
    the MLflow, W&B and Comet integrations only to read their names: Ray's own count imports mlflow where it
    is installed, 0.7 s of every sweep's start-up on 2 cores for a telemetry tag."""
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    builtin = {"WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback",
               *(c.__name__ for c in DEFAULT_CALLBACK_CLASSES)}
    counts: dict[str, int] = {}
    for c in callbacks or []:
        if isinstance(c, Callback):
            key = (type(c).__name__ if type(c).__name__ in builtin
                   else "CustomLoggerCallback" if isinstance(c, LoggerCallback) else "CustomCallback")
            counts[key] = counts.get(key, 0) + 1
    return counts


def _tuner(spec: SweepSpec, storage: Storage, name: str, cell: dict[str, Any] | None, resume: bool,
           quiet: bool = False, attempt: str = ""):
    from ray import tune
    from ray.air._internal import usage
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from ccr.distributed.progress import SweepProgress

    if getattr(usage, "_count_callbacks", None) is not None:  # Ray's private helper; kept if renamed
        usage._count_callbacks = _count_callbacks_by_name

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_tree=spec.base_tree, runs=storage.child("runs").uri,
                             threads=max(1, int(spec.cpus_per_trial)), pretrained=storage.child("pretrained").uri,
                             cases=spec.cases, shared=storage.child("cache").uri, attempt=attempt),
        trial_resources(spec))
    fs = storage.filesystem if storage.remote else None
    path = storage.fs_path(name)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("restoring %s", storage.display(name))
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    search_alg, metric, mode, samples = None, None, None, 1
    if spec.optuna:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study it creates

        metric, mode = spec.optuna["metric"], spec.optuna["mode"]
        search_alg = OptunaSearch(metric=metric, mode=mode, seed=spec.config_for(cell or {}).seed)
        samples = int(spec.optuna.get("num_samples", 8))
    total = samples if spec.optuna else len(spec.cells())
    progress = [] if quiet else [SweepProgress(total, label=lambda t: trial_name(trial_params(t.config)), metric=metric,
                                               runs=storage.child("runs"))]
    return tune.Tuner(
        trainable, param_space=_tune_space(spec, cell),
        tune_config=tune.TuneConfig(search_alg=search_alg, metric=metric, mode=mode, num_samples=samples,
                                    max_concurrent_trials=spec.max_concurrent_trials,
                                    # a finished trial's process runs the next trial: no new Python, no
                                    # re-import of torch (measured: 7.1 s -> 0.0 s between trials on 2 cores)
                                    reuse_actors=True,
                                    trial_name_creator=lambda t: trial_name(trial_params(t.config))[:100],
                                    trial_dirname_creator=lambda t: f"{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=storage.fs_path(), storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures), verbose=0,
                                  callbacks=[*progress, JsonLoggerCallback(), CSVLoggerCallback()]),
    )


def run_sweep(path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
              resume: bool = False, quiet: bool = False) -> int:
    """Run (or resume) a sweep; returns a process exit code: 0 when every trial finished, 1 when some failed
    (each has an error.txt), 130 when interrupted."""

    spec = load_spec(path, overrides)  # every config error before Ray starts
    storage = open_storage(out or Path("runs") / "sweeps" / spec.name)
    try:
        return _run_sweep_in(spec, storage, path, overrides, resume, quiet)
    except BaseException:
        if not storage.is_file("sweep.yaml"):  # refused before it began: no folder left behind
            storage.remove_created()
        raise


def _run_sweep_in(spec: SweepSpec, storage: Storage, path: str | Path, overrides: list[str] | None, resume: bool,
                  quiet: bool) -> int:
    same = {"sweep": Path(path).read_text(), "overrides": list(overrides or [])}
    if storage.is_file("sweep.yaml"):
        try:
            before = storage.read_json("sweep_input.json")
        except (OSError, json.JSONDecodeError):
            before = None
        if before is not None and before != same:  # --resume too: its trials hold the other sweep's configs
            sets = "".join(f" --set {shlex.quote(o)}" for o in before.get("overrides", []))
            raise ConfigError(f"{storage.display()} already holds a different sweep (recorded in its "
                              f"sweep_input.json{', with' + sets if sets else ''}); resume that one with the command "
                              "that started it, or choose another --out")
        if not resume:
            log.info("%s holds this same sweep: resuming it (finished trials are not run again)", storage.display())
        resume = True
    with exclusive(storage, "sweep"):  # a second `ccr sweep` on this storage is refused, not interleaved
        finished, total, named = _run_sweep_locked(spec, storage, same, resume, quiet)
    if finished < total:  # Ctrl-C (SIGINT) or SIGUSR1: Tune stopped after saving its state
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides or [])
        left = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
        print(f"ccr: sweep interrupted: {finished} of {total} trials finished; left: {left}. Resume it with: "
              f"ccr sweep {shlex.quote(str(path))}{sets} --out {shlex.quote(redact(storage.uri))} (finished trials "
              "are not run again)", file=sys.stderr)
        return 130
    if named:  # the failed trials
        runs = storage.child("runs")
        shown = "\n  ".join(runs.display(f"{n}/error.txt") for n in named[:10])
        more = f"\n  ... and {len(named) - 10} more (sweep_status.json lists them)" if len(named) > 10 else ""
        print(f"ccr: {len(named)} of {total} trials failed; their errors are in:\n  {shown}{more}", file=sys.stderr)
        return 1
    return 0


def _short_name(name: str, keep: int = 80) -> str:
    """At most `keep` characters, distinct for distinct names (a digest of the whole where it is cut): two
    Optuna cells that share their first 80 characters must not share an experiment and a best.json."""
    return name if len(name) <= keep else name[:keep - 13] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


class _NoTuneResumeAdvice(logging.Filter):
    """Tune's own advice on an interrupted experiment (`Tuner.restore(...)`) is not how a ccr sweep resumes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


def _track_sweep(spec: SweepSpec, storage: Storage) -> tuple[str, str] | None:
    """With tracking.mlflow: the sweep's own MLflow run, named as parent in every trial's config (and the
    experiment defaulting to the sweep's name); returns (uri, run id)."""
    t = spec.base_tree.get("tracking") or {}
    if not t.get("mlflow"):
        return None
    from ccr.io.tracking import sweep_run

    t = spec.base_tree.setdefault("tracking", {})
    t.setdefault("experiment", spec.name)
    run_id = sweep_run(t["mlflow"], t["experiment"], spec.name, storage)
    if run_id:
        t["parent"] = run_id
    return (t["mlflow"], run_id) if run_id else None


def _study_complete(runs: Storage, name: str) -> bool:
    """Whether the trial's study says it finished: its results.json, not Tune's status (a trial Tune stopped on
    Ctrl-C is "terminated" too)."""
    try:
        return runs.child(name).read_json("results.json").get("status") == "complete"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _left(spec: SweepSpec, summary: dict[str, Any], total: int, finished: int) -> list[str]:
    """The trials an interrupted sweep has still to run: by name for a grid, as a count for a search."""
    if spec.optuna:
        return [f"{total - finished} of {total} searched trials"]
    done = set(summary["trials"]) | set(summary["failed"])
    return [n for n in (trial_name(c) for c in spec.cells() or [{}]) if n not in done]


def _record_grid(grid, spec: SweepSpec, name: str, summary: dict[str, Any], runs: Storage) -> None:
    """One Tune experiment's trials into the sweep's summary: each finished trial's metric (or "complete"), each
    failed trial's error, and the best trial where Optuna searched. A trial counts as finished only where its
    study's results.json says so; one Tune never started (no config) or stopped unfinished is left out."""
    for r in grid:
        if not r.config:
            continue
        key = trial_name(trial_params(r.config))
        if r.error:
            summary["failed"][key] = str(r.error)[-500:]
        elif _study_complete(runs, key):
            summary["trials"][key] = r.metrics.get(spec.optuna["metric"]) if spec.optuna else "complete"
    if spec.optuna and summary["trials"]:
        try:
            best = grid.get_best_result(spec.optuna["metric"], spec.optuna["mode"])
            metric = spec.optuna["metric"]
            summary["best"][name] = {"config": best.config, metric: best.metrics[metric]}
        except RuntimeError as e:
            summary["best"][name] = {"error": str(e)}


def _run_sweep_locked(spec: SweepSpec, storage: Storage, same: dict[str, Any], resume: bool, quiet: bool
                      ) -> tuple[int, int, list[str]]:
    """Run the sweep's Tune experiments; returns (trials finished or failed, trials in the sweep, names): fewer
    finished than the sweep has means it was interrupted, nothing is summarised as if it were done, and the
    names are the trials left; otherwise they are the failed trials'."""
    import uuid


    # a cluster that does not answer, or resources it can never grant, are refused before the record. No
    # workers prestarted: Tune's trial actors carry environment variables, so Ray starts workers of their own
    # for them, and the prestarted ones only took CPU from the start-up (0.4 s of ray.init on 2 cores)
    init_ray(prestart=False, log_to_driver=False)
    check_can_ever_run("a trial", "resources.cpus_per_trial / gpus_per_trial",
                       {"CPU": spec.cpus_per_trial, "GPU": spec.gpus_per_trial})
    if check_inputs(spec, storage.child("cache").uri):  # a dataset that cannot be read: before any trial
        log.info("the sweep's datasets are readable, and staged and cached on this node")
    storage.write_text("sweep.yaml", same["sweep"])
    storage.write_json("sweep_input.json", same)
    tracked = _track_sweep(spec, storage)
    # ccr's SweepProgress reports on the trials; Tune's newer console output would still print its
    # configuration box, the results path and a TensorBoard hint at verbose=0. The classic one is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers include TensorBoardX's, whose import imports torch into the driver: 2.3 s of the
    # sweep's start-up on 2 cores, for event files of one result per trial that nothing reads (ccr's own
    # tracking.tensorboard writes each study's). Its JSON and CSV loggers are passed in _tuner instead.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    cells = spec.cells() if (spec.optuna and spec.grid) else [None]
    attempt = uuid.uuid4().hex[:12]
    summary: dict[str, Any] = {"trials": {}, "failed": {}, "best": {}}
    per_cell = int(spec.optuna.get("num_samples", 8)) if spec.optuna else len(spec.cells())
    total, finished = per_cell * len(cells), 0
    logging.getLogger("ray.tune.tune").addFilter(_NoTuneResumeAdvice())
    runs = storage.child("runs")
    for cell in cells:
        name = "tune" if cell is None else "tune-" + _short_name(trial_name(cell))
        try:
            grid = _tuner(spec, storage, name, cell, resume, quiet, attempt).fit()
        except KeyboardInterrupt:  # a second Ctrl-C while Tune was stopping
            grid = None
        before = len(summary["trials"]) + len(summary["failed"])
        if grid is not None:
            _record_grid(grid, spec, name, summary, runs)
        done = len(summary["trials"]) + len(summary["failed"]) - before
        finished += done
        if done < per_cell:  # interrupted: what is not complete is named, and nothing is summarised as done
            left = _left(spec, summary, total, finished)
            storage.write_json("sweep_status.json", {**summary, "interrupted": True, "left": left})
            return finished, total, left
    storage.write_json("sweep_status.json", summary)
    if spec.optuna:
        storage.write_json("best.json", summary["best"])
    if tracked:  # the report of the finished sweep, to its MLflow run
        from ccr.analysis.html_report import analyze
        from ccr.io.tracking import sweep_finish

        with tempfile.TemporaryDirectory() as tmp:
            analyze(storage.uri, tmp)
            sweep_finish(*tracked, Path(tmp))
    print(json.dumps({"storage": storage.display(), "trials": len(summary["trials"]),
                      "failed": len(summary["failed"])}))
    return finished, total, sorted(summary["failed"])
