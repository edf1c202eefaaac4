"""Live tracking of studies: MLflow (`tracking.mlflow: URI`) and TensorBoard (`tracking.tensorboard: true`).

Every `ccr run` and every sweep trial is one MLflow run: the flat config as params, strategy / policy / seed /
task order as tags, after each task the headline metrics of that moment (what results.json's `metrics` would be
had the sequence ended there, every compared policy included) as metric steps, the task's mean training loss,
the training loss of every epoch (`train/loss_per_epoch`, epochs counted over the sequence), and at the end
results.json's `metrics` (the last step of each history), results.json and config.yaml as
artifacts. The run's id is kept in the study's folder (`tracking.json`), so a resumed study continues its run.
MLflow's own names may not hold `@`: `t2i/R@1` is logged as `t2i/R_at_1`.

Why MLflow's client and not Ray's `MLflowLoggerCallback`: the callback sees what a Tune trial reports (ccr's
trials report once, at the end), makes a new MLflow run for every retry of a trial, and does not exist for
`ccr run`. The study itself knows when a task is done and which run it continues.

A tracking server that is down, or refuses a call, is a warning: the study goes on and its results are
complete. MLflow's HTTP retries are shortened (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT) so that a dead
server costs seconds, not minutes, per call.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ccr.errors import ConfigError

log = logging.getLogger(__name__)
STATE = "tracking.json"


def mlflow_name(metric: str) -> str:
    """A ccr metric name as MLflow accepts it (no `@`)."""
    return metric.replace("@", "_at_")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'tracking.mlflow' needs MLflow: pip install -e \".[tracking]\" (or pip install "
                          "mlflow)") from None


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'tracking.tensorboard' needs TensorBoard: pip install -e \".[tracking]\" (or "
                          "pip install tensorboard)") from None


def _quick_http() -> None:
    """MLflow retries a failed request for minutes by default: a dead server must cost seconds."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def open_run(client, uri: str, store, experiment: str, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run recorded in `store` (tracking.json) for this server, continued; else a new run in
    `experiment` (made if missing), recorded there. Returns (run id, whether it is new)."""
    known = (store.read_json(STATE) if store.is_file(STATE) else {}).get("mlflow") or {}
    if known.get("run_id") and known.get("uri") == uri:  # resumed: the same run
        client.update_run(known["run_id"], status="RUNNING")
        return known["run_id"], False
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, tags=tags, run_name=name).info.run_id
    store.write_json(STATE, {"mlflow": {"uri": uri, "run_id": run_id, "experiment_id": exp_id}})
    return run_id, True


class Tracker:
    """What one study sends to its trackers; every call is safe (a failure is a warning, once per kind)."""

    def __init__(self, cfg, store, run_name: str, config_dict: dict[str, Any], task_order: list[str]):
        self.cfg, self.store, self.run_name, self.config_dict = cfg.tracking, store, run_name, config_dict
        self.full_cfg, self.task_order = cfg, task_order
        self.run_id: str | None = None
        self.client = None
        self.warned: set[str] = set()
        self.tb = None
        self.tb_dir: Path | None = None
        _quick_http()

    # ---- MLflow ------------------------------------------------------------------------------
    def _warn(self, what: str, e: Exception) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning("tracking: MLflow at %s: cannot %s (%s); the study goes on", self.cfg.mlflow, what,
                        _first_line(e))

    def _start(self) -> bool:
        if self.run_id is not None:
            return True
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.cfg.mlflow)
            c = self.full_cfg
            strategy = c.strategy.name if isinstance(c.strategy.name, str) else "+".join(c.strategy.name)
            tags = {"ccr.kind": "study", "strategy": strategy, "policy": c.index.policy, "seed": str(c.seed),
                    "task_order": ">".join(self.task_order), "ccr.io.storage": self.store.display(),
                    **({"mlflow.parentRunId": self.cfg.parent} if self.cfg.parent else {}),
                    **{f"tag.{k}": str(v) for k, v in c.tags.items()}}
            self.run_id, new = open_run(self.client, self.cfg.mlflow, self.store,
                                        self.cfg.experiment or self.run_name, self.run_name, tags)
            if new:
                params = [Param(k[:250], v[:6000]) for k, v in flat(self.config_dict).items()]
                for i in range(0, len(params), 100):
                    self.client.log_batch(self.run_id, params=params[i:i + 100])
            return True
        except Exception as e:  # noqa: BLE001  (a tracker never costs a result)
            self._warn("start a run", e)
            self.client, self.run_id = None, None
            return False

    def _log_metrics(self, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(mlflow_name(k), v, now, step) for k, v, step in points]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    # ---- the study's calls -------------------------------------------------------------------
    def after_task(self, step: int, metrics: dict[str, float], train: dict[str, float] | None) -> None:
        """The headline metrics with the tasks learned so far, and the task's training statistics."""
        scalars = dict(metrics)
        if train:
            scalars.update({f"train/{k}": v for k, v in train.items() if k in ("mean_loss", "pairs_per_s")})
        points = [(k, float(v), step) for k, v in scalars.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        # the training loss per epoch, on a step axis of its own: epochs counted over the whole sequence
        epochs = list((train or {}).get("epoch_loss") or [])
        points += [("train/loss_per_epoch", float(v), step * len(epochs) + e) for e, v in enumerate(epochs)]
        if self.cfg.mlflow and self._start():
            try:
                self._log_metrics(points)
            except Exception as e:  # noqa: BLE001
                self._warn("log metrics", e)
        if self.cfg.tensorboard:
            self._tensorboard(points)

    def finish(self, results_json: bytes, config_yaml: str) -> None:
        """The artifacts of a complete study, and the run marked finished."""
        if not (self.cfg.mlflow and self._start()):
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in (("results.json", results_json), ("config.yaml", config_yaml.encode())):
                    (Path(tmp) / name).write_bytes(data)
                    self.client.log_artifact(self.run_id, str(Path(tmp) / name))
            self.client.set_terminated(self.run_id, status="FINISHED")
        except Exception as e:  # noqa: BLE001
            self._warn("log artifacts", e)

    # ---- TensorBoard -------------------------------------------------------------------------
    def _tensorboard(self, points: list[tuple[str, float, int]]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            if self.tb is None:
                local = self.store.local_path
                self.tb_dir = (local / "tensorboard") if local is not None else Path(
                    tempfile.mkdtemp(prefix="ccr-tensorboard-"))
                self.tb = SummaryWriter(log_dir=str(self.tb_dir))
            for k, v, step in points:
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
            if self.store.local_path is None:  # a study in an object store: its event files go there too
                self.store.upload_dir(self.tb_dir, "tensorboard")
        except Exception as e:  # noqa: BLE001
            if "tensorboard" not in self.warned:
                self.warned.add("tensorboard")
                log.warning("tracking: cannot write TensorBoard events (%s); the study goes on", e)


def sweep_run(uri: str, experiment: str, name: str, store) -> str | None:
    """The sweep's own MLflow run (the parent of its trials' runs), continued when the sweep resumes; None
    (with a warning) where the server cannot be reached."""
    _quick_http()
    try:
        from mlflow.tracking import MlflowClient

        tags = {"ccr.kind": "sweep", "ccr.io.storage": store.display()}
        return open_run(MlflowClient(tracking_uri=uri), uri, store, experiment, name, tags)[0]
    except Exception as e:  # noqa: BLE001
        log.warning("tracking: MLflow at %s: cannot start the sweep's run (%s); the sweep goes on", uri,
                    _first_line(e))
        return None


def sweep_finish(uri: str, run_id: str, analysis: Path) -> None:
    """The sweep's analysis (report.html, summary.md) as artifacts of its run, and the run marked finished."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for name in ("report.html", "summary.md"):
            if (analysis / name).is_file():
                client.log_artifact(run_id, str(analysis / name), "analysis")
        client.set_terminated(run_id, status="FINISHED")
    except Exception as e:  # noqa: BLE001
        log.warning("tracking: MLflow at %s: cannot log the sweep's analysis (%s)", uri, _first_line(e))
