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
complete. MLflow's HTTP retries are shortened (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT), and every call is
bounded in total time (CCR_TRACKING_TIMEOUT, default 20 s: a server that answers a byte at a time never lets a
per-read timeout fire); a kind of call that failed once is not tried again by that study. The address's
credentials (`http://user:PASSWORD@host`) are used, never written or shown.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccr.errors import ConfigError
from ccr.io.redact import redact, safe

log = logging.getLogger(__name__)
STATE = "tracking.json"


def mlflow_name(metric: str) -> str:
    """A ccr metric name as MLflow accepts it (no `@`)."""
    return metric.replace("@", "_at_")


def valid_metric_name(name: str) -> bool:
    """Whether MLflow takes `name` (its own check where it has one)."""
    try:
        from mlflow.utils.validation import _validate_metric_name
    except ImportError:  # pragma: no cover - another MLflow: let the server decide
        return True
    try:
        _validate_metric_name(name)
        return True
    except Exception:  # noqa: BLE001
        return False


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


def _quick_http(uri: str | None = None) -> None:
    """MLflow retries a failed request for minutes by default: a dead server must cost seconds. A folder (or
    file:// URI) is MLflow's file store, which MLflow 3 opens only when asked to: the user asked for it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if uri and ("://" not in uri or uri.startswith("file:")):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _timeout() -> float:
    try:
        t = float(os.environ.get("CCR_TRACKING_TIMEOUT") or 20)
    except ValueError:
        t = 20.0
    return t if 0 < t < 86400 else 20.0


def bounded(fn: Callable[[], Any], seconds: float | None = None) -> Any:
    """fn() in a daemon thread, given at most `seconds` in total (TimeoutError after); MLflow's own printing
    (run links, which carry the server's address) goes to the log, redacted."""
    seconds = _timeout() if seconds is None else seconds
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        t = threading.Thread(target=run, daemon=True, name="ccr-tracking")
        t.start()
        t.join(seconds)
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.info("mlflow: %s", safe(line))
    if t.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s (CCR_TRACKING_TIMEOUT)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _first_line(e: BaseException) -> str:
    """The reason, short: an OS error's own words where the message wraps one ([Errno 111] Connection refused)."""
    text = safe(str(e).strip())
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 300 else first[:297].rsplit(" ", 1)[0] + " ..."


def open_run(client, uri: str, store, experiment: str, name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run recorded in `store` (tracking.json) for this server, continued; else a new run in
    `experiment` (made if missing), recorded there. Returns (run id, whether it is new)."""
    known = (store.read_json(STATE) if store.is_file(STATE) else {}).get("mlflow") or {}
    if known.get("run_id") and known.get("uri") == redact(uri):  # resumed: the same run
        client.update_run(known["run_id"], status="RUNNING")
        return known["run_id"], False
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, tags=tags, run_name=name).info.run_id
    store.write_json(STATE, {"mlflow": {"uri": redact(uri), "run_id": run_id, "experiment_id": exp_id}})
    return run_id, True


class Tracker:
    """What one study sends to its trackers; every call is safe (a failure is a warning, once per kind)."""

    def __init__(self, cfg, store, run_name: str, config_dict: dict[str, Any], task_order: list[str]):
        self.cfg, self.store, self.run_name, self.config_dict = cfg.tracking, store, run_name, config_dict
        self.full_cfg, self.task_order = cfg, task_order
        self.run_id: str | None = None
        self.client = None
        self.warned: set[str] = set()  # kinds of call that failed: not tried again by this study
        self.tb = None
        self.tb_dir: Path | None = None
        _quick_http(cfg.tracking.mlflow)

    # ---- MLflow ------------------------------------------------------------------------------
    def _warn(self, what: str, e: BaseException) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning("tracking: MLflow at %s: cannot %s (%s); the study goes on without it", redact(self.cfg.mlflow),
                        what, _first_line(e))

    def _start(self) -> bool:
        if self.run_id is not None:
            return True
        if "start a run" in self.warned:  # failed once: each task would wait for it again
            return False
        try:  # assigned here, not in the thread: a call that timed out may still finish later
            self.client, self.run_id = bounded(self._open)
            return True
        except Exception as e:  # noqa: BLE001  (a tracker never costs a result)
            self._warn("start a run", e)
            self.client, self.run_id = None, None
            return False

    def _open(self) -> tuple[Any, str]:
        """(client, the study's run id): the run new, or continued, with the config as params."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.cfg.mlflow)
        c = self.full_cfg
        strategy = c.strategy.name if isinstance(c.strategy.name, str) else "+".join(c.strategy.name)
        tags = {"ccr.kind": "study", "strategy": strategy, "policy": c.index.policy, "seed": str(c.seed),
                "task_order": ">".join(self.task_order), "ccr.io.storage": self.store.display(),
                **({"mlflow.parentRunId": self.cfg.parent} if self.cfg.parent else {}),
                **{f"tag.{k}": str(v) for k, v in c.tags.items()}}
        run_id, new = open_run(client, self.cfg.mlflow, self.store, self.cfg.experiment or self.run_name,
                               self.run_name, tags)
        if new:
            params = [Param(k[:250], v[:6000]) for k, v in flat(self.config_dict).items()]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
        return client, run_id

    def _log_metrics(self, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ok, bad = [], []
        for k, v, step in points:  # MLflow refuses a whole batch for one bad name: the others are still logged
            (ok if valid_metric_name(mlflow_name(k)) else bad).append(Metric(mlflow_name(k), v, now, step))
        if bad and "metric names" not in self.warned:
            self.warned.add("metric names")
            log.warning("tracking: MLflow does not take the metric names %s; they are not logged (the others are)",
                        ", ".join(sorted({m.key for m in bad}))[:500])
        for i in range(0, len(ok), 1000):
            self.client.log_batch(self.run_id, metrics=ok[i:i + 1000])

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
        if self.cfg.mlflow and "log metrics" not in self.warned and self._start():
            try:
                bounded(lambda: self._log_metrics(points))
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
                def send() -> None:
                    for name, data in (("results.json", results_json), ("config.yaml", config_yaml.encode())):
                        (Path(tmp) / name).write_bytes(data)
                        self.client.log_artifact(self.run_id, str(Path(tmp) / name))
                    self.client.set_terminated(self.run_id, status="FINISHED")

                bounded(send)
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
    _quick_http(uri)
    try:
        from mlflow.tracking import MlflowClient

        tags = {"ccr.kind": "sweep", "ccr.io.storage": store.display()}
        return bounded(lambda: open_run(MlflowClient(tracking_uri=uri), uri, store, experiment, name, tags)[0])
    except Exception as e:  # noqa: BLE001
        log.warning("tracking: MLflow at %s: cannot start the sweep's run (%s); the sweep goes on", redact(uri),
                    _first_line(e))
        return None


def sweep_finish(uri: str, run_id: str, analysis: Path) -> None:
    """The sweep's analysis (report.html, summary.md) as artifacts of its run, and the run marked finished."""
    try:
        from mlflow.tracking import MlflowClient

        def send() -> None:
            client = MlflowClient(tracking_uri=uri)
            for name in ("report.html", "summary.md"):
                if (analysis / name).is_file():
                    client.log_artifact(run_id, str(analysis / name), "analysis")
            client.set_terminated(run_id, status="FINISHED")

        bounded(send)
    except Exception as e:  # noqa: BLE001
        log.warning("tracking: MLflow at %s: cannot log the sweep's analysis (%s)", redact(uri), _first_line(e))
