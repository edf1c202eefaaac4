"""Bad input and faults, fed the way a user would: the case, the command, the message, and what is kept.

Tables of `ccr run` cases (each: the case, extra --set values or a set-up, the exit code, the message),
then the cases that need more of a set-up of their own: a held output folder, a diverging study, a
dataset that points outside its image root or does not decode, a full disk, tampered checkpoints, a
diverging sweep trial, and result files that are not ccr results. README: "What ccr refuses, and why".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ccr.checkpoint import from_bytes
from ccr.cli import main
from ccr.config import ConfigError
from ccr.study import checkpoint_path
from tests.test_analysis import fake_result

REPO = Path(__file__).resolve().parent.parent


def _sets(items):
    return [x for o in items for x in ("--set", o)]


CASES = [
    # (case, extra overrides, exit code, message in stderr)
    ("NaN learning rate", ["train.lr=.nan"], 2, "config key 'train.lr': must be a finite number, got nan"),
    ("infinite learning rate", ["train.lr=.inf"], 2, "config key 'train.lr': must be a finite number, got inf"),
    ("NaN temperature", ["train.temperature=.nan"], 2, "config key 'train.temperature': must be a finite number"),
    ("negative weight decay", ["train.weight_decay=-0.1"], 2, "config key 'train.weight_decay': must be >= 0"),
    ("a K twice", ["eval.ks=[1,1]"], 2, "config key 'eval.ks': must be a non-empty list of distinct positive ints"),
    ("diverging training", ["train.lr=1e9", "train.grad_clip=0"], 1, "training diverged on task 'round' (task 1 of 2)"),
    ("one test image per task", ["data.test_per_task=1"], 2,
     "tasks with fewer than 2 test images (eval.min_test_items): round (1), boxes (1)"),
    ("one training image per task", ["data.train_per_task=1"], 2,
     "tasks with fewer than 2 training images (1 worker(s) x 2, for in-batch negatives): round (1), boxes (1)"),
]


@pytest.mark.parametrize("case, extra, code, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_run_input_is_one_clear_line(case, extra, code, needle, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", *extra])])
    err = capsys.readouterr().err
    assert rc == code and needle in err and "Traceback" not in err, err[-2000:]
    assert err.count("ccr: error:") == 1
    assert not (out / "results.json").exists()  # nothing half-written passes for a result
    assert not list(out.glob("checkpoints/*.pt"))  # no checkpoint with non-finite weights
    assert not (out / ".ccr.lock").exists()  # the lock went with the run


@pytest.mark.parametrize("ks", ["[3]", "[20]", "[2,3]"])
def test_any_set_of_k_works_end_to_end(ks, tiny_overrides, tmp_path, capsys):
    from ccr.analysis.html_report import analyze

    out = tmp_path / "out"
    sets = _sets([*tiny_overrides, "data.n_tasks=2", f"eval.ks={ks}"])
    assert main(["run", "--quiet", "--out", str(out), *sets]) == 0
    k = min(json.loads(ks))
    assert f"t2i R@{k}" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert sorted(map(int, res["recall"]["t2i"])) == sorted(json.loads(ks))
    assert res["metrics"]["rsum"] == pytest.approx(  # no 1/5/10 measured: rsum adds the K it has
        sum(res["metrics"][f"{d}/R@{kk}"] for d in ("i2t", "t2i") for kk in json.loads(ks)))
    an = analyze(out)
    assert f"at K={k}" in (an / "summary.md").read_text() and (an / f"heatmaps_t2i_R{k}.png").is_file()


def test_a_diverged_study_keeps_its_last_good_checkpoint(tiny_overrides, tmp_path, capsys, monkeypatch):
    """Task 1 trains normally; task 2 diverges (after a resume, its loss becomes NaN)."""
    out, sets = tmp_path / "out", [*tiny_overrides, "data.n_tasks=2"]
    assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    (out / "checkpoints" / "02_boxes.pt").unlink()
    (out / "results.json").unlink()
    from ccr import losses

    real = losses.contrastive
    monkeypatch.setattr(losses, "contrastive", lambda *a: {k: v * float("nan") for k, v in real(*a).items()})
    rc = main(["run", "--quiet", "--out", str(out), *_sets(sets)])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged on task 'boxes' (task 2 of 2)" in err, err[-1500:]
    assert (out / "checkpoints" / "01_round.pt").is_file() and not (out / "checkpoints" / "02_boxes.pt").exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "out"
    sets = _sets([*tiny_overrides, "data.n_tasks=2", "train.epochs=30", "train.threads=1"])
    first = subprocess.Popen([sys.executable, "-m", "ccr.cli", "run", "--quiet", "--out", str(out), *sets],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".ccr.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    rc = main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", "seed=1"])])
    err = capsys.readouterr().err
    assert rc == 1 and f"{out} is in use by another ccr run (pid {first.pid}" in err, err[-1500:]
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert json.loads((out / "results.json").read_text())["seed"] == 0  # the first run's results, whole
    assert not (out / ".ccr.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_overrides, tmp_path, capsys):
    import platform

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ccr.lock").write_text(json.dumps({"pid": int(dead), "host": platform.node(), "what": "run"}))
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert "taking over a lock left by a stopped process" in capsys.readouterr().err


@pytest.mark.parametrize("filepath", ["../../outside", "/etc", "sub/../../.."])
def test_image_paths_outside_the_image_root_are_refused(filepath, tmp_path):
    from ccr.configure import load_config
    from ccr.data import DataError, load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    data = json.loads(paths["path"].read_text())
    data["images"][3]["filepath"] = filepath
    data["images"][3]["filename"] = "passwd"
    paths["path"].write_text(json.dumps(data))
    tasks = json.loads(paths["tasks_file"].read_text())
    paths["tasks_file"].write_text(json.dumps({**tasks, "passwd": "animal"}))
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}"])
    with pytest.raises(DataError, match="leave data.images") as e:
        load_dataset(cfg)
    assert "passwd" in str(e.value) and "exist" not in str(e.value)


def _file(tmp_path):
    (tmp_path / "out").write_text("not a folder")


def _corrupt_config(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text("data: {kind: [generated\n")


SETUP_CASES = [
    # (case, set-up, extra overrides, exit code, message in stderr)
    ("--out is a file", _file, [], 2, "is a file, not a folder"),
    ("a corrupt config.yaml in --out", _corrupt_config, [], 2, "config.yaml is corrupt"),
    ("cuda without a GPU", None, ["train.device=cuda"], 2, "config key 'train.device': 'cuda', but torch sees no GPU"),
]


@pytest.mark.parametrize("case, setup, extra, code, needle", SETUP_CASES, ids=[c[0] for c in SETUP_CASES])
def test_bad_output_folders_and_devices(case, setup, extra, code, needle, tiny_overrides, tmp_path, capsys):
    if setup:
        setup(tmp_path)
    rc = main(["run", "--quiet", "--out", str(tmp_path / "out"), *_sets([*tiny_overrides, *extra])])
    err = capsys.readouterr().err
    assert rc == code and needle in err and "Traceback" not in err and err.count("ccr: error:") == 1, err[-1500:]


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.1\nseed: 1\ntrain:\n  epochs: 2\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert f"config file {cfg}: line 4: key 'train' is given twice" in capsys.readouterr().err


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


def test_analyze_of_a_missing_path_is_an_error_and_creates_nothing(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nope").exists()


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["images"].append(dict(d["images"][5])), "images listed twice"),
    (lambda d: d["images"].__setitem__(2, "img_002.png"), "an image entry is not an object: img_002.png"),
    (lambda d: d["images"][2]["sentences"].append({"raw": 42}), "a caption ('raw') is not a string: 42"),
])
def test_malformed_karpathy_entries_are_named(mutate, needle, tmp_path):
    from ccr.configure import load_config
    from ccr.data import DataError, load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    data = json.loads(paths["path"].read_text())
    mutate(data)
    paths["path"].write_text(json.dumps(data))
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}"])
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(cfg)


def test_leftovers_of_killed_writes_are_removed(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".ccr-results.json.k2j3.tmp").write_text("{half")
    (out / "checkpoints" / ".ccr-01_round.pt.x81.tmp").write_bytes(b"PK\x03")
    (out / ".ccr-tokenizer.a1.tmp").mkdir()
    (out / ".ccr-tokenizer.a1.tmp" / "tokenizer.json").write_text("{")
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert oct((out / "tokenizer").stat().st_mode)[-3:] == "755"  # shared, not 0700


def test_a_truncated_jpeg_is_named_before_training_and_good_verdicts_are_cached(tmp_path):
    from ccr.configure import load_config
    from ccr.data import DataError, load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    over = ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
            f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", "data.in_memory=false"]
    load_dataset(load_config(None, over))  # every image decodes: verdicts cached
    (cache,) = (tmp_path / "cache" / "image_checks").glob("*.json")
    assert len(json.loads(cache.read_text())) == 24
    jpeg = paths["images"] / "sub" / "img_000.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # Image.verify() accepts this; decoding does not
    for how in ("data.in_memory=false", "data.in_memory=true", "data.image_cache=true"):  # every pixel store
        with pytest.raises(DataError, match="unreadable image files.*img_000.jpg"):
            load_dataset(load_config(None, [*over, how]))


def test_an_output_folder_that_cannot_be_written_fails_before_training(tiny_overrides, capsys):
    target = Path("/sys/ccr-test-out")  # sysfs: not writable, even for root (chmod does not stop root)
    if os.access("/sys", os.W_OK) and not target.exists():
        try:
            target.mkdir()
            target.rmdir()
            pytest.skip("/sys is writable here")
        except OSError:
            pass
    assert main(["run", "--quiet", "--out", str(target), *_sets(tiny_overrides)]) == 2
    err = capsys.readouterr().err
    assert f"ccr: error: cannot write to {target}" in err and "Traceback" not in err


def test_disk_full_names_the_file_and_keeps_what_was_written(tiny_overrides, tmp_path, capsys, monkeypatch):
    import errno

    import ccr.storage

    real = ccr.storage.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "results.json":  # the partial results after task 1: the disk is full by then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(ccr.storage, "atomic_write_bytes", full_disk)
    out, sets = tmp_path / "out", _sets([*tiny_overrides, "data.n_tasks=2"])
    assert main(["run", "--quiet", "--out", str(out), *sets]) == 1
    err = capsys.readouterr().err
    assert f"ccr: error: cannot write {out / 'results.json'}: No space left on device" in err
    assert (out / "checkpoints" / "01_round.pt").is_file() and not (out / ".ccr.lock").exists()
    monkeypatch.setattr(ccr.storage, "atomic_write_bytes", real)  # space again: the run resumes after task 1
    assert main(["run", "--quiet", "--out", str(out), *sets]) == 0
    assert json.loads((out / "results.json").read_text())["resumes"] == [0]


# ---- checkpoints ---------------------------------------------------------------------------------
class _RunsCode:
    """What an attacker pickles into a checkpoint: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_checkpoint_is_refused_and_runs_nothing(tiny_overrides, tmp_path, capsys):
    sets = [x for o in [*tiny_overrides, "data.n_tasks=2"] for x in ("--set", o)]
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 0
    ck = checkpoint_path(tmp_path / "o", 1, ["round", "boxes"])
    good = from_bytes(ck.read_bytes(), "task 1")
    assert isinstance(good["evaluator"]["states"]["reindex"]["galleries"]["images"], dict)  # numpy round trip
    marker = tmp_path / "pwned"
    torch.save({**good, "step": _RunsCode(marker)}, ck)  # a colleague's (or a bucket's) file, tampered with
    (tmp_path / "o" / "results.json").unlink()
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {ck}" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated: named too
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    assert f"checkpoint {ck} cannot be read" in capsys.readouterr().err
    ck.write_bytes(b"")  # zero bytes: the same
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    assert f"checkpoint {ck} cannot be read" in capsys.readouterr().err


def test_checkpoint_pack_round_trips_numpy_exactly():
    from ccr.checkpoint import to_bytes

    obj = {"a": np.arange(5, dtype=np.int64), "b": (np.ones((2, 3), np.float32), [np.float64(2.5)]),
           "c": np.array(["x", "yz"]), "t": torch.ones(2), 3: "k"}
    back = from_bytes(to_bytes(obj), "x")
    assert back["a"].dtype == np.int64 and np.array_equal(back["a"], obj["a"]) and back[3] == "k"
    assert isinstance(back["b"], tuple) and back["b"][0].dtype == np.float32 and back["b"][1] == [2.5]
    assert back["c"].tolist() == ["x", "yz"] and torch.equal(back["t"], obj["t"])


# ---- sweeps and analysis ---------------------------------------------------------------------------

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


@pytest.mark.parametrize("mutate, why", [
    (lambda r: r["by_policy"].__setitem__("reindex", None), "policy 'reindex' is NoneType, not an object"),
    (lambda r: r["by_policy"]["reindex"]["recall"]["t2i"].__setitem__("1", [["x", None], [1.0, 2.0]]),
     "recall t2i@1 is not a matrix of numbers"),
    (lambda r: r["by_policy"]["reindex"].pop("summary"), "policy 'reindex' has no 'summary'"),
    (lambda r: r.__setitem__("task_order", ["a"]), "recall i2t@1 is not a matrix of numbers over the 1 tasks"),
    (lambda r: r.__setitem__("task_order", "a>b"), "'task_order' is not a list of task names"),
    (lambda r: r["by_policy"]["reindex"]["summary"]["bwt"]["t2i"].pop("1"), "metrics t2i@1 are incomplete"),
])
def test_json_that_is_not_a_ccr_result_is_named_and_skipped(tmp_path, mutate, why):
    from ccr.analysis.html_report import analyze

    for name, final in (("finetune", 10.0), ("ewc", 20.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(fake_result(name, 0, final, 5.0)))
    bad = fake_result("lwf", 9, 1.0, 1.0)
    mutate(bad)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "results.json").write_text(json.dumps(bad))
    out = analyze(tmp_path)  # never aborts
    status = json.loads((out / "status.json").read_text())
    assert status["runs"] == 2 and [p.split("/")[-2] for p, _ in status["corrupt"]] == ["odd"]
    assert why in status["corrupt"][0][1]
