"""Live tracking against a real MLflow tracking server (`mlflow server` on 127.0.0.1 with a SQLite store): a sweep's
trials as MLflow runs with their metrics per task and artifacts, a resumed study continuing its run, a server
that dies mid-study costing nothing but warnings, and TensorBoard event files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ccr.cli import main
from tests.cli import REPO, _sets

mlflow = pytest.importorskip("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in a process of its own, on 127.0.0.1, its store and artifacts under `folder`."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests that leave it running (each writes its own experiment): a start costs 10-20 s."""
    s = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own, which it stops."""
    s = MlflowServer(tmp_path / "mlflow")
    yield s
    if s.proc.poll() is None:
        s.stop()


def study_runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], "tags.`ccr.kind` = 'study'")


@pytest.mark.slow
def test_a_tracked_sweep_is_two_mlflow_runs_with_metrics_per_task_and_artifacts(server, tmp_path):
    from mlflow.tracking import MlflowClient

    from ccr.io.tracking import mlflow_name
    from tests.test_sweep import tiny_sets, write

    spec = write(tmp_path, {"name": "tracked", "grid": {"strategy.name": ["finetune", "lwf"]}})
    sets = [x for o in [*tiny_sets(tmp_path), "data.n_tasks=3", "train.epochs=2", f"tracking.mlflow={server.uri}",
                        "index.compare=[no_reindex]"] for x in ("--set", o)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ccr.cli", "sweep", str(spec), "--out", str(out), "--quiet", *sets],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking_uri=server.uri)
    runs = study_runs(client, "tracked")
    assert len(runs) == 2
    for r in runs:
        res = json.loads(Path(r.data.tags["ccr.io.storage"], "results.json").read_text())
        assert r.data.tags["strategy"] == res["strategy"] and r.data.tags["task_order"] == ">".join(res["task_order"])
        assert r.data.params["train.epochs"] == "2" and r.info.status == "FINISHED"
        for name, value in res["metrics"].items():
            history = client.get_metric_history(r.info.run_id, mlflow_name(name))
            # one value per task (negative flips from the second: no update before the first)
            assert [m.step for m in history] == ([1, 2] if "negative_flips" in name else [0, 1, 2]), name
            assert history[-1].value == pytest.approx(value), name  # the last: results.json's metric
        assert len(client.get_metric_history(r.info.run_id, "no_reindex/t2i/R_at_1")) == 3
        assert len(client.get_metric_history(r.info.run_id, "train/mean_loss")) == 3
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss_per_epoch")] == list(range(6))
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"results.json", "config.yaml"}
        assert r.data.tags["mlflow.parentRunId"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["ccr.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")} == {
        "analysis/report.html", "analysis/summary.md"}


def test_a_resumed_study_continues_its_run_and_a_dead_server_costs_nothing(server, tiny_overrides, tmp_path,
                                                                          caplog):
    from mlflow.tracking import MlflowClient

    from ccr.study.runner import checkpoint_path

    out = tmp_path / "study"
    sets = [*tiny_overrides, "data.n_tasks=3", "train.epochs=1", f"tracking.mlflow={server.uri}",
            "tracking.experiment=resume"]
    assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    res = json.loads((out / "results.json").read_text())
    checkpoint_path(out, 2, res["task_order"]).unlink()  # as if killed during the last task
    (out / "results.json").unlink()
    assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    client = MlflowClient(tracking_uri=server.uri)
    (run,) = study_runs(client, "resume")  # the same run, continued
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "t2i/R_at_1")] == [0, 1, 2, 2]

    # the tracking server is gone (nothing answers at its address any more): warnings, and complete results
    t = time.time()
    other = tmp_path / "other"
    gone = [x for x in sets if not x.startswith("tracking.mlflow=")] + [f"tracking.mlflow=http://127.0.0.1:{free_port()}"]
    assert main(["run", "--quiet", "--out", str(other), *_sets([*gone, "seed=1"])]) == 0
    done = json.loads((other / "results.json").read_text())
    assert done["status"] == "complete" and done["tasks_done"] == 3
    assert any("tracking: MLflow at" in r.getMessage() and "the study goes on" in r.getMessage()
               for r in caplog.records)
    assert time.time() - t < 120


def test_tensorboard_events_and_a_missing_extra(tiny_overrides, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", "train.epochs=1",
                                                              "tracking.tensorboard=true"])]) == 0
    ev = EventAccumulator(str(out / "tensorboard"))
    ev.Reload()
    res = json.loads((out / "results.json").read_text())
    assert [s.step for s in ev.Scalars("t2i/R@1")] == [0, 1]
    assert ev.Scalars("t2i/R@1")[-1].value == pytest.approx(res["metrics"]["t2i/R@1"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert main(["run", "--quiet", "--out", str(tmp_path / "x"), *_sets([*tiny_overrides,
                                                                         "tracking.mlflow=http://127.0.0.1:9"])]) == 2
    err = capsys.readouterr().err
    assert 'needs MLflow: pip install -e ".[tracking]"' in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_tracking_server_stopped_mid_sweep_gives_warnings_and_complete_results(own_server, tmp_path):
    server = own_server
    from tests.test_sweep import results_in, tiny_sets, write

    spec = write(tmp_path, {"name": "dies", "grid": {"seed": [0, 1]}, "max_concurrent_trials": 1})
    sets = [x for o in [*tiny_sets(tmp_path), "data.n_tasks=3", "train.epochs=40", f"tracking.mlflow={server.uri}"]
            for x in ("--set", o)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ccr.cli", "sweep", str(spec), "--out", str(out), "--quiet", *sets],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("runs/*/tracking.json")):  # a trial's run was opened
        time.sleep(0.3)
    server.stop()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    res = results_in(out)
    assert len(res) == 2 and all(r["status"] == "complete" for r in res.values())
    logs = "".join(p.read_text() for p in out.glob("runs/*/log.txt"))
    assert "tracking: MLflow at" in logs and "the study goes on" in logs


class _Misbehaving:
    """A 'tracking server' on 127.0.0.1 that drips one byte at a time (`drip`), or answers garbage bytes."""

    def __init__(self, mode: str):
        import threading

        self.mode, self.connections = mode, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        try:
            conn.recv(65536)
            if self.mode == "garbage":
                body = b'{"error_code": "BAD", "message": "\x00\x1b[2J\x1b]0;owned\x07boom \xff\xfe"}'
                conn.sendall(b"HTTP/1.1 400 Bad\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                conn.close()
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.stopped.is_set():  # a byte every half second: no read ever times out
                conn.sendall(b"{")
                time.sleep(0.5)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


def test_a_server_that_never_finishes_answering_costs_one_bounded_wait(tiny_overrides, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("CCR_TRACKING_TIMEOUT", "2")
    server = _Misbehaving("drip")
    try:
        t = time.time()
        out = tmp_path / "o"
        sets = [*tiny_overrides, "data.n_tasks=3", "train.epochs=1", f"tracking.mlflow={server.uri}"]
        assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
        elapsed = time.time() - t
    finally:
        server.stop()
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    err = capsys.readouterr().err
    assert err.count("tracking: MLflow at") == 1 and "no answer within 2 s (CCR_TRACKING_TIMEOUT)" in err, err
    assert server.connections == 1  # not tried again after each task
    assert elapsed < 60


def test_bytes_a_server_sends_are_printed_and_logged_printable(tiny_overrides, tmp_path, capsys):
    server = _Misbehaving("garbage")
    try:
        out = tmp_path / "o"
        sets = [*tiny_overrides, "data.n_tasks=2", "train.epochs=1", f"tracking.mlflow={server.uri}"]
        assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    finally:
        server.stop()
    err = capsys.readouterr().err
    log = (out / "log.txt").read_text()
    assert "tracking: MLflow at" in err and "boom" in err and "boom" in log
    for text in (err, log):
        assert not any(c in text for c in "\x00\x1b\x07"), repr(text)


def test_one_name_mlflow_refuses_does_not_drop_the_other_metrics(caplog):
    from types import SimpleNamespace

    from ccr.io.tracking import Tracker

    batches = []
    t = Tracker.__new__(Tracker)
    t.warned, t.run_id = set(), "r"
    t.client = SimpleNamespace(log_batch=lambda run_id, metrics: batches.append([m.key for m in metrics]))
    t._log_metrics([("t2i/R@1", 1.0, 0), ("t2i/R@1/cats&dogs", 2.0, 0), ("../up", 3.0, 0)])
    assert batches == [["t2i/R_at_1"]]
    assert "does not take the metric names ../up, t2i/R_at_1/cats&dogs" in caplog.text


def test_a_folder_as_the_tracking_address_is_mlflows_file_store(tiny_overrides, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    sets = [*tiny_overrides, "data.n_tasks=2", "train.epochs=1", f"tracking.mlflow={folder}",
            "tracking.experiment=local"]
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *_sets(sets)]) == 0
    client = MlflowClient(tracking_uri=str(folder))
    (run,) = study_runs(client, "local")
    assert run.info.status == "FINISHED"


def test_a_warning_says_why_in_a_few_words_never_cut_mid_word():
    from ccr.io.tracking import _first_line

    refused = ("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/2.0/mlflow/"
               "experiments/get-by-name?experiment_name=x (Caused by NewConnectionError('<urllib3.connection."
               "HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection "
               "refused'))")
    assert _first_line(Exception(refused)) == "[Errno 111] Connection refused"
    long = _first_line(Exception("word " * 100))
    assert len(long) <= 300 and long.endswith(" ...") and "wor ..." not in long
