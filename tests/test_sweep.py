"""`ccr sweep`: spec errors (no Ray), a tiny sweep, driver kill + resume, Optuna, cluster files.

Multi-node sweeps (S3 storage, a lost node, an added one) are in test_cluster_storage.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ccr.cli import main
from ccr.config.schema import ConfigError
from ccr.distributed.sweep_spec import load_spec, trial_name
from tests.cli import REPO
from tests.conftest import TINY


def write(tmp_path, spec, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def tiny_sets(tmp_path):
    return [*TINY, "data.n_tasks=2", f"data.cache_dir={tmp_path / 'cache'}", "train.threads=1"]


@pytest.mark.parametrize("spec, needle", [
    ({"grid": {"train.lrr": [0.1]}}, "unknown config key 'train.lrr'"),
    ({"grid": {"strategy.name": ["finetune", "nope"]}}, "unknown strategy 'nope'"),
    ({"grid": {"seed": []}}, "grid axis 'seed' is empty"),
    ({"grid": {"strategy.name": ["finetune", "cclip"]}}, "grid cell {'strategy.name': 'cclip'}: strategy cclip "
                                                         "learns each task in LoRA adapters"),
    ({"grid": {}}, "the grid is empty"),
    ({"grid": {"seed": [0]}, "set": {"data.val_per_task": 4},
      "optuna": {"space": {"strategy.name": {"type": "loguniform", "low": 1, "high": 2}},
                 "metric": "val/forgetting/t2i/R@1", "mode": "min"}}, "needs a numeric key"),
    ({"grid": {"seed": [0]}, "set": {"data.val_per_task": 4},
      "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                 "metric": "no_reindex/t2i/R@1", "mode": "max"}, "set_compare": 1},
     "is measured on test items"),
    ({"grid": {"seed": [0]}, "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                                         "metric": "t2i/R@1", "mode": "max"}},
     "is measured on test items; choosing hyperparameters on them reports an optimistic test number. Select on "
     "the val split: 'val/t2i/R@1'"),
    ({"grid": {"seed": [0]}, "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                                         "metric": "val/t2i/R@1", "mode": "max"}}, "set data.val_per_task"),
    ({"grid": {"seed": [0]}, "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                                         "metric": "happiness/t2i/R@1", "mode": "max"}}, "is not in the results"),
    ({"grid": {"seed": [0]}, "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                                         "metric": "summary.avg_final_recall.t2i.1", "mode": "max"}},
     "is now called 't2i/R@1'"),
    ({"grid": {"seed": [0]}, "sweeep": 1}, "unknown key(s) ['sweeep']"),
    ({"grid": {"seed": {"a": {"train.lr": 0.1}}}}, "grid axis 'seed' is a config key, so it takes a list"),
    ({"grid": {"regime": {"a": {"train.lr": 0.1}, "b": 3}}}, "case 'b' of grid axis 'regime' must map config keys"),
    ({"grid": {"regime": {"a": {"train.lrr": 0.1}}}}, "unknown config key 'train.lrr'"),
    ({"grid": {"regime": {"a": {"train.lr": "fast"}}}}, "config key 'train.lr': expected float"),
    ({"grid": {"regime": {"a": {"tags.regime": "x"}}}}, "a named axis sets tags.regime itself"),
    ({"grid": {"train.lr": [0.1], "regime": {"a": {"train.lr": 0.2}}}},
     "'train.lr' is set by both grid axis 'train.lr' and the cases of grid axis 'regime'"),
    ({"grid": {"r1": {"a": {"train.lr": 0.2}}, "r2": {"b": {"train.lr": 0.1}}}},
     "'train.lr' is set by both the cases of grid axis 'r1' and the cases of grid axis 'r2'"),
    ({"grid": {"regime": {"a": {"train.lr": 0.2}}}, "set": {"data.val_per_task": 4},
      "optuna": {"space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                 "metric": "val/t2i/R@1", "mode": "max"}}, "set by the cases of grid axis 'regime' and an optuna"),
])
def test_spec_errors_before_anything_starts(tmp_path, spec, needle):
    if spec.pop("set_compare", None):
        spec["set"] = {**spec["set"], "index.compare": ["no_reindex"]}
    with pytest.raises(ConfigError) as e:
        load_spec(write(tmp_path, spec))
    assert needle in str(e.value)


def test_spec_cells_permutations_and_names(tmp_path):
    spec = load_spec(write(tmp_path, {"grid": {"strategy.name": ["finetune", "lwf"],
                                               "tasks.order": {"random_permutations": 2}}}),
                     [f"data.cache_dir={tmp_path / 'c'}", "data.n_tasks=3", *TINY[1:5]])
    cells = spec.cells()
    assert len(cells) == 4 and all(sorted(c["tasks.order"]) == ["boxes", "round", "triangles"] for c in cells)
    assert len({trial_name(c) for c in cells}) == 4
    assert trial_name({"strategy.name": "lwf", "seed": 1}) == "seed=1,strategy.name=lwf"


def test_trials_start_with_the_most_training_work(tmp_path):
    """Tune starts trials in the order it is given them: longest first (epochs x the strategies' work over the
    tasks), ties in grid order; joint trains task t on t tasks, several strategies add their extra work."""
    from ccr.strategies import REGISTRY

    spec = load_spec(write(tmp_path, {"grid": {"strategy.name": ["finetune", "joint", "lwf", ["lwf", "replay"]],
                                               "train.epochs": [1, 3], "seed": [0, 1]},
                                      "set": {"data.n_tasks": 4}}), [])
    order = spec.launch_order()
    assert sorted(map(json.dumps, order)) == sorted(map(json.dumps, spec.cells()))

    def work(cell):
        names = cell["strategy.name"] if isinstance(cell["strategy.name"], list) else [cell["strategy.name"]]
        per = {"joint": 4 * 5 / 2}  # 1 + 2 + 3 + 4 tasks' pairs
        works = [per.get(n, 4 * REGISTRY[n].relative_work) for n in names]
        return cell["train.epochs"] * (sum(works) - 4 * (len(works) - 1))

    works = [work(c) for c in order]
    assert works == sorted(works, reverse=True)
    grid = spec.cells()
    for a, b in zip(order, order[1:], strict=False):  # equal work: grid order kept
        if work(a) == work(b):
            assert grid.index(a) < grid.index(b)
    assert order[0] == {"strategy.name": "joint", "train.epochs": 3, "seed": 0}  # 10 tasks' work x 3 epochs
    assert order[-1] == {"strategy.name": "finetune", "train.epochs": 1, "seed": 1}


def test_a_strategys_parameters_neither_name_nor_multiply_the_other_strategies_trials(tmp_path):
    """finetune x lwf x two lwf weights is three studies, not four: finetune runs once, and its trial is not named
    by a parameter it does not use."""
    spec = load_spec(write(tmp_path, {"grid": {"strategy.name": ["finetune", "lwf"], "seed": [0],
                                               "strategy.params.lwf.emb_weight": [0.5, 2.0]}}),
                     [f"data.cache_dir={tmp_path / 'c'}"])
    assert sorted(trial_name(c) for c in spec.cells()) == [
        "seed=0,strategy.name=finetune", "seed=0,strategy.name=lwf,lwf.emb_weight=0.5",
        "seed=0,strategy.name=lwf,lwf.emb_weight=2"]
    from ccr.distributed.sweep_spec import trial_params

    assert trial_params({"cell": {"seed": 0}}) == {"seed": 0} and trial_params({"train.lr": 0.1}) == {"train.lr": 0.1}


def test_named_cases_set_their_keys_and_a_tag(tmp_path):
    """One case sets several keys together (a regime and the strategy parameters chosen for it); a
    strategy's parameters reach only that strategy's studies, and the case's name is the trial's name."""
    spec = load_spec(write(tmp_path, {"grid": {
        "regime": {"scratch": {"tasks.pretrain": [], "strategy.params.lwf.emb_weight": 2.0},
                   "pretrained": {"tasks.pretrain": ["round"], "strategy.params.lwf.emb_weight": 0.5}},
        "strategy.name": ["finetune", "lwf"]}}), [f"data.cache_dir={tmp_path / 'c'}", "data.n_tasks=3"])
    cells = spec.cells()
    assert len(cells) == 4 and {c["regime"] for c in cells} == {"scratch", "pretrained"}
    got = {(c["regime"], c["strategy.name"]): spec.config_for(c) for c in cells}
    assert got["pretrained", "lwf"].tasks.pretrain == ["round"] and got["scratch", "lwf"].tasks.pretrain == []
    assert got["pretrained", "lwf"].strategy.params["lwf"]["emb_weight"] == 0.5
    assert got["scratch", "lwf"].strategy.params["lwf"]["emb_weight"] == 2.0
    assert got["scratch", "finetune"].strategy.params == {}  # another strategy's parameters are not kept
    assert {k: c.tags for k, c in got.items()}["pretrained", "finetune"] == {"regime": "pretrained"}
    assert trial_name({"regime": "scratch", "strategy.name": "lwf"}) == "regime=scratch,strategy.name=lwf"
    numbered = load_spec(write(tmp_path, {"grid": {"level": {1: {"train.lr": 0.1}, 2: {"train.lr": 0.2}}}}, "n.yaml"))
    assert [(numbered.config_for(c).tags, numbered.config_for(c).train.lr) for c in numbered.cells()] == [
        ({"level": "1"}, 0.1), ({"level": "2"}, 0.2)]  # YAML reads the names as numbers: still found


def test_long_trial_names_are_the_same_in_every_interpreter():
    """Long names end in a digest; Python's hash() would differ per process (PYTHONHASHSEED)."""
    params = {f"strategy.params.lwf.weight_{i}": 0.123456789 * i for i in range(12)}
    code = ("import json,sys; from ccr.distributed.sweep_spec import trial_name; "
            "print(trial_name(json.loads(sys.argv[1])))")
    names = {subprocess.run([sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}, check=True, cwd=REPO).stdout.strip()
             for seed in ("1", "2")}
    assert len(names) == 1 and names == {trial_name(params)} and len(names.pop()) < 180


# ---- with Ray ---------------------------------------------------------------------------------------
ray = pytest.importorskip("ray")


@pytest.fixture
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def results_in(storage):
    return {p.parent.name: json.loads(p.read_text()) for p in (Path(storage) / "runs").glob("*/results.json")}


@pytest.mark.slow
def test_tiny_sweep_leaves_four_results_and_optuna_records_best(ray_local, tmp_path, capsys):
    from ccr.distributed.tune import run_sweep

    # a named axis: each case sets the policy and an lwf parameter together
    spec = write(tmp_path, {"grid": {"strategy.name": ["finetune", "lwf"], "seed": [0], "policy": {
        "re": {"index.policy": "reindex", "strategy.params.lwf.emb_weight": 2.0},
        "no": {"index.policy": "no_reindex", "strategy.params.lwf.emb_weight": 0.5}}}})
    assert run_sweep(spec, tiny_sets(tmp_path), tmp_path / "out") == 0
    printed = capsys.readouterr()
    lines = [ln for ln in printed.err.splitlines() if ln.startswith("[sweep ")]
    done = [ln for ln in lines if "] done " in ln]
    for noise in ("View detailed results", "tensorboard", "Configuration for experiment", "Trial status"):
        assert noise.lower() not in (printed.out + printed.err).lower(), noise  # ccr's lines, not Tune's
    assert len(done) == 4 and all("t2i/R@1" in ln and "index_cost/embedded" in ln for ln in done), lines
    assert sum("] started " in ln for ln in lines) == 4 and "\x1b" not in "".join(lines)  # no terminal codes
    started = [ln for ln in lines if "] started " in ln]
    assert all("strategy.name=lwf" in ln for ln in started[:2]), started  # lwf's work first, on both slots
    assert lines[-1].startswith("[sweep 4/4") and "0 pending, 0 running, 4 done, 0 failed" in lines[-1]
    assert any("left" in ln for ln in done[:-1])  # an estimate once a trial has finished
    res = results_in(tmp_path / "out")
    assert len(res) == 4 and all(r["status"] == "complete" for r in res.values())
    assert all("task 2/2: boxes" in (tmp_path / "out" / "runs" / n / "log.txt").read_text() for n in res)
    assert {(r["strategy"], r["policy"]) for r in res.values()} == {
        ("finetune", "reindex"), ("finetune", "no_reindex"), ("lwf", "reindex"), ("lwf", "no_reindex")}
    assert {r["config"]["tags"]["policy"]: r["policy"] for r in res.values()} == {"re": "reindex", "no": "no_reindex"}
    assert {(r["policy"], r["config"]["strategy"]["params"].get("lwf", {}).get("emb_weight"))
            for r in res.values()} == {("reindex", None), ("no_reindex", None), ("reindex", 2.0), ("no_reindex", 0.5)}
    stamps = {n: (tmp_path / "out" / "runs" / n / "results.json").stat().st_mtime_ns for n in res}
    assert run_sweep(spec, tiny_sets(tmp_path), tmp_path / "out") == 0  # the same sweep again: resumes
    assert {n: (tmp_path / "out" / "runs" / n / "results.json").stat().st_mtime_ns for n in res} == stamps
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(spec, [*tiny_sets(tmp_path), "train.epochs=1"], tmp_path / "out")

    opt = write(tmp_path, {"grid": {"seed": [0]}, "optuna": {
        "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
        "metric": "val/t2i/R@1", "mode": "max", "num_samples": 3}, "set": {"data.val_per_task": 4}}, "o.yaml")
    # no train.threads here: each trial's torch threads must follow the 1 CPU it was granted (not the 2 cores)
    capsys.readouterr()
    assert run_sweep(opt, [s for s in tiny_sets(tmp_path) if not s.startswith("train.threads")], tmp_path / "opt",
                     quiet=True) == 0
    assert "[sweep " not in capsys.readouterr().err  # --quiet
    best = json.loads((tmp_path / "opt" / "best.json").read_text())
    (cell,) = best.values()
    assert 1e-3 <= cell["config"]["train.lr"] <= 1e-2 and "val/t2i/R@1" in cell
    assert len(results_in(tmp_path / "opt")) == 3
    assert {r["provenance"]["torch_threads"] for r in results_in(tmp_path / "opt").values()} == {1}


@pytest.mark.slow
def test_ctrl_c_or_a_killed_driver_resumes_counting_and_never_rerunning_finished_trials(tmp_path):
    """SIGINT to `ccr sweep` (as Ctrl-C sends it to the terminal's process group) while its first trials train,
    two at a time: Tune stops after saving its state; ccr says the sweep was interrupted, names the trials left
    and how to resume it with its own command (not Tune's Tuner.restore advice), exits 130 and marks no trial
    complete whose study has no complete results.json. --resume with other overrides is refused and leaves the
    sweep's record. The resumed sweep, SIGKILLed with the Ray it started once a trial has finished, is resumed
    again: it runs what is left and never a finished trial again. (One sweep for both ways of stopping: each
    costs a sweep's start.)"""
    grid = ["finetune", "lwf", "ewc", "replay"]
    spec = write(tmp_path, {"grid": {"strategy.name": grid}, "max_concurrent_trials": 2})
    # studies of a few seconds: the signal reaches them while they train (the two not started yet are left
    # whatever happens to the first two)
    sets = [x for o in [*tiny_sets(tmp_path), "train.epochs=100"] for x in ("--set", o)]
    cmd = [sys.executable, "-m", "ccr.cli", "sweep", str(spec), "--out", str(tmp_path / "out"), *sets]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((tmp_path / "out" / "runs").glob("*/trial.json"))) < 2:
        time.sleep(0.2)  # both first trials have started their studies
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    complete = finished(tmp_path / "out")
    status = json.loads((tmp_path / "out" / "sweep_status.json").read_text())
    assert status["interrupted"] is True and set(status["trials"]) == complete, (status, complete)
    assert "?" not in status["trials"] and len(status["left"]) == 4 - len(complete) >= 2, status
    assert set(status["left"]) == {f"strategy.name={g}" for g in grid} - complete
    assert "ccr: sweep interrupted:" in err and f"Resume it with: ccr sweep {spec}" in err
    assert f"left: {status['left'][0]}" in err
    assert "Tuner.restore" not in err
    assert '"trials"' not in out  # no end-of-sweep summary line
    record = (tmp_path / "out" / "sweep_input.json").read_text()
    bad = subprocess.run([*cmd, "--set", "train.epochs=1", "--resume"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "already holds a different sweep" in bad.stderr
    assert (tmp_path / "out" / "sweep_input.json").read_text() == record
    # resumed, then SIGKILLed (the driver and the Ray it started) with a finished trial to protect and some left:
    # as soon as it starts a trial where one finished before Ctrl-C, else once one more has finished
    runs = tmp_path / "out" / "runs"
    before = starts(runs)
    proc = subprocess.Popen([*cmd, "--resume"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (starts(runs) == before if complete else
                                      len(finished(tmp_path / "out")) == len(complete)):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = finished(tmp_path / "out")
    assert 1 <= len(done_before) < 4 and complete <= done_before, (complete, done_before)
    stamps = {n: ((runs / n / "results.json").stat().st_mtime_ns, (runs / n / "starts.log").read_text())
              for n in done_before}
    # the resumed sweep's driver, watched for what it imports: the trials train in Ray's workers, so the driver
    # needs neither torch nor transformers, nor mlflow or TensorBoardX (Tune's logger and usage tag import them)
    heavy = ("torch", "transformers", "mlflow", "tensorboardX")
    watch = ("import atexit, os, sys\n"
             "atexit.register(lambda: open(os.environ['CCR_TEST_MODULES'], 'w').write("
             f"' '.join(m for m in {heavy!r} if m in sys.modules)))\n"
             "from ccr.cli import main\nsys.exit(main(sys.argv[1:]))")
    modules = tmp_path / "modules.txt"
    again = subprocess.run([sys.executable, "-c", watch, *cmd[3:]], cwd=REPO,
                           env={**env, "CCR_TEST_MODULES": str(modules)}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert modules.read_text() == "", modules.read_text()
    tune_trials = list((tmp_path / "out" / "tune").glob("*/result.json"))  # Tune's own logs, for its analysis
    assert len(tune_trials) == 4 and not list((tmp_path / "out" / "tune").glob("*/events.out.tfevents*"))
    lines = [ln for ln in again.stderr.splitlines() if ln.startswith("[sweep ")]
    assert lines[-1].startswith("[sweep 4/4") and "4 done, 0 failed" in lines[-1], lines[-1]
    res = results_in(tmp_path / "out")
    assert len(res) == 4 and all(r["status"] == "complete" for r in res.values())
    assert set(json.loads((tmp_path / "out" / "sweep_status.json").read_text())["trials"]) == set(res)
    for n in done_before:  # finished trials were not run again
        assert ((runs / n / "results.json").stat().st_mtime_ns, (runs / n / "starts.log").read_text()) == stamps[n]


def finished(storage) -> set[str]:
    return {n for n, r in results_in(storage).items() if r["status"] == "complete"}


def starts(runs: Path) -> dict[str, int]:
    """How many times each trial's study has started (its starts.log's lines)."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in runs.glob("*/starts.log")}


@pytest.mark.parametrize("resources, needle", [
    ({"cpus_per_trial": "two"}, "resources.cpus_per_trial must be a number >= 0, got 'two'"),
    ({"cpus_per_trial": 0}, "a trial must request some CPU or GPU"),
    ({"cpu": 1}, "resources takes cpus_per_trial and gpus_per_trial"),
])
def test_bad_sweep_resources(resources, needle, tmp_path):
    import yaml

    from ccr.distributed.sweep_spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"grid": {"seed": [0]}, "resources": resources}))
    with pytest.raises(ConfigError, match=needle):
        load_spec(spec)


def test_a_second_sweep_on_the_same_storage_is_refused_before_ray_starts(tmp_path, capsys):
    import platform

    import yaml

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({"grid": {"seed": [0]}}))
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / ".ccr.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": platform.node(), "what": "sweep", "command": "ccr sweep s.yaml"}))
        assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 1
        assert "is in use by another ccr sweep" in capsys.readouterr().err
        assert not (tmp_path / "out" / "sweep.yaml").exists()
    finally:
        holder.kill()


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_diverged_and_counted_once(ray_local, tmp_path, capsys):
    from ccr.analysis.load import collect
    from ccr.distributed.tune import run_sweep
    from tests.test_sweep import tiny_sets, write

    spec = write(tmp_path, {"grid": {"strategy.name": ["finetune"]}, "max_failures": 0})
    sets = [*tiny_sets(tmp_path), "data.n_tasks=2", "train.lr=1e9", "train.grad_clip=0"]
    assert run_sweep(spec, sets, tmp_path / "out") == 1  # a failed trial fails the sweep, saying where
    err = capsys.readouterr().err
    assert "ccr: 1 of 1 trials failed; their errors are in:" in err and "/error.txt" in err
    status = json.loads((tmp_path / "out" / "sweep_status.json").read_text())
    assert len(status["failed"]) == 1 and not status["trials"]
    (err,) = (tmp_path / "out" / "runs").glob("*/error.txt")
    assert err.read_text().startswith("diverged: ") and "training diverged on task 'round'" in err.read_text()
    assert list((tmp_path / "out").glob("tune/**/error.txt"))  # Ray's own record of the same failure...
    assert len(collect(tmp_path / "out").failed) == 1  # ...is not counted as a second failed run


def test_trial_names_never_collide_and_case_names_yaml_reads_as_booleans_are_refused(tmp_path):
    from ccr.distributed.sweep_spec import load_spec, trial_name

    assert trial_name({"tags.x": "a/b"}) != trial_name({"tags.x": "a_b"})
    assert trial_name({"train.lr": 0.1234567}) != trial_name({"train.lr": 0.12345671})
    assert trial_name({"seed": 1, "train.lr": 0.001}) == "seed=1,train.lr=0.001"  # exact: readable, unchanged
    spec = tmp_path / "s.yaml"
    spec.write_text("grid:\n  flag:\n    yes: {train.lr: 0.1}\n    no: {train.lr: 0.2}\n")
    with pytest.raises(ConfigError, match="has a case named True, which YAML reads from yes/no"):
        load_spec(spec)


def test_the_usage_tag_counts_callbacks_as_rays_own_count_does():
    """ccr counts a sweep's callbacks for Ray's usage tag without Ray's imports of MLflow and W&B; the counts
    are Ray's own, for every kind of callback Ray tells apart (in a fresh Python: a sweep in this one replaced
    Ray's count)."""
    code = """if True:
        import json
        from ray.air._internal import usage
        from ray.tune import Callback
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback
        from ccr.distributed.progress import SweepProgress
        from ccr.distributed.tune import _count_callbacks_by_name

        class Mine(LoggerCallback):
            pass

        class Yours(Callback):
            pass

        cbs = [SweepProgress(2, label=str), JsonLoggerCallback(), CSVLoggerCallback(), JsonLoggerCallback(),
               Mine(), Yours(), object()]
        print(json.dumps([usage._count_callbacks(cbs), _count_callbacks_by_name(cbs)]))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    rays, ours = json.loads(out.stdout.strip().splitlines()[-1])
    assert ours == rays == {"CustomCallback": 2, "JsonLoggerCallback": 2, "CSVLoggerCallback": 1,
                            "CustomLoggerCallback": 1}
