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
    from ccr.config import load_config
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

    from ccr.config import ConfigError
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
    from ccr.config import load_config
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


def test_an_empty_out_is_refused_and_a_users_folder_loses_nothing(tiny_overrides, tmp_path, capsys, monkeypatch):
    """`--out ""` (an unset $OUT) is an error; in a folder that is not a ccr output, ccr removes nothing it did
    not write: the user's own tokenizer/ and *.tmp files stay, and a foreign tokenizer/ is refused, not replaced."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--out", "", *_sets(tiny_overrides)]) == 2
    assert "--out is empty (an unset variable?)" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / ".draft.tmp").write_text("my draft")
    (mine / "notes" / "a.txt").write_text("keep")
    assert main(["run", "--quiet", "--out", str(mine), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert (mine / ".draft.tmp").read_text() == "my draft" and (mine / "notes" / "a.txt").read_text() == "keep"
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    (other / "tokenizer" / "vocab.txt").write_text("my vocabulary")
    assert main(["run", "--quiet", "--out", str(other), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 2
    assert "is not a tokenizer ccr wrote" in capsys.readouterr().err
    assert (other / "tokenizer" / "vocab.txt").read_text() == "my vocabulary"


def test_a_checkpoint_of_another_study_is_refused_and_an_older_config_is_the_same_study(tiny_overrides, tmp_path,
                                                                                       capsys):
    """Resume checks the config a checkpoint was made with (config.yaml deleted, or a checkpoint copied in); a
    config.yaml written before keys existed (they are absent, at their defaults) is the same study."""
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    base = [*tiny_overrides, "data.n_tasks=2", "train.threads=1"]
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 0
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    order = json.loads((a / "results.json").read_text())["task_order"]
    # b's first checkpoint copied into a, whose own last checkpoint and results are gone
    checkpoint_path(a, 1, order).unlink()
    (a / "results.json").unlink()
    checkpoint_path(a, 0, order).write_bytes(checkpoint_path(b, 0, order).read_bytes())
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 2
    assert "made by a study with a different config (train.lr)" in capsys.readouterr().err
    # an older ccr's config.yaml: without keys added since (at their defaults here)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    for sec, key in (("model", "pretrained"), ("model", "adapter"), ("eval", "transfer"), ("eval", "control"),
                     ("data", "control_per_task")):
        del cfg[sec][key]
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    (b / "results.json").unlink()
    checkpoint_path(b, 1, order).unlink()
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    assert json.loads((b / "results.json").read_text())["resumes"] == [0]
    # a key that differs is named
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.02"])]) == 2
    assert "holds a study with a different config (train.lr)" in capsys.readouterr().err


def test_grad_accum_steps_across_epochs(tiny_cfg, tmp_path):
    """train.grad_accum=4 with 3 batches per epoch: the steps count over the task (2 epochs: 6 batches, 2
    steps, the last over 2 batches), never 0 steps and an untrained model."""
    from ccr.study import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.grad_accum=4", "train.epochs=2"), tmp_path / "o",
                progress=False).run()
    assert res["train"][0]["steps"] == 2
    plain = Study(tiny_cfg("data.n_tasks=1", "train.epochs=2"), tmp_path / "p", progress=False).run()
    assert plain["train"][0]["steps"] == 6


def test_precomputed_features_that_are_not_finite_and_captions_with_unicode_separators(tmp_path):
    from ccr.config import load_config
    from ccr.data import DataError, load_dataset
    from tests.data_fixtures import make_precomp

    paths = make_precomp(tmp_path / "p")
    caps = (paths["path"] / "train_caps.txt").read_text().split("\n")
    caps[0] = caps[0] + " \u2028 and \x85 more \x0c"  # separators str.splitlines would split on
    (paths["path"] / "train_caps.txt").write_text("\n".join(caps))
    cfg = load_config(None, ["data.kind=precomp", f"data.path={paths['path']}",
                             f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'c'}"])
    ds = load_dataset(cfg)
    assert "\u2028" in ds.captions[0] and len(ds.captions) == 5 * ds.n_images
    test = np.load(paths["path"] / "test_ims.npy")
    test[3, 1] = np.nan
    test[7, 0] = np.inf
    np.save(paths["path"] / "test_ims.npy", test)
    with pytest.raises(DataError, match=r"test_ims.npy: 2 image\(s\) have NaN or infinite values \(rows 3, 7\)"):
        load_dataset(cfg)


def test_16_bit_images_are_scaled_not_white(tmp_path):
    from PIL import Image

    from ccr.data.pixels import load_image_file

    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = load_image_file(tmp_path / "g16.png", 32)
    assert 120 < x.mean() < 135 and x.min() < 10 and x.max() > 245  # a gradient, as the 16-bit values say


def test_report_escapes_every_field_of_a_result(tmp_path):
    """report.html is made from results.json files anyone could have written: strategy, policy, device,
    versions and thread counts reach the page as text, never as markup."""
    from ccr.analysis.html_report import analyze

    bad = "<script>alert(1)</script>"
    res = fake_result(bad, 0, 20.0, 5.0)
    res["provenance"] = {"device": bad, "torch_threads": bad, "versions": {"ccr": bad, "torch": bad}, "host": bad}
    res["by_policy"][bad] = res["by_policy"]["reindex"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path)
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_truncated_jpeg_is_named_before_training_and_good_verdicts_are_cached(tmp_path):
    from ccr.config import load_config
    from ccr.data import DataError, load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    over = ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
            f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}"]
    load_dataset(load_config(None, over))  # every image decodes: verdicts cached
    (cache,) = (tmp_path / "cache" / "image_checks").glob("*.json")
    assert len(json.loads(cache.read_text())) == 24
    jpeg = paths["images"] / "sub" / "img_000.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # Image.verify() accepts this; decoding does not
    with pytest.raises(DataError, match="unreadable image files.*img_000.jpg"):
        load_dataset(load_config(None, over))


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
def test_a_diverging_trial_is_recorded_as_diverged_and_counted_once(ray_local, tmp_path):
    from ccr.analysis.load import collect
    from ccr.distributed.tune import run_sweep
    from tests.test_sweep import tiny_sets, write

    spec = write(tmp_path, {"grid": {"strategy.name": ["finetune"]}, "max_failures": 0})
    sets = [*tiny_sets(tmp_path), "data.n_tasks=2", "train.lr=1e9", "train.grad_clip=0"]
    assert run_sweep(spec, sets, tmp_path / "out") == 0  # a failed trial does not fail the sweep
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


def test_analysis_of_runs_of_mixed_configs_and_versions(tiny_cfg, tmp_path):
    """A config key some results lack (written by another ccr version or source) is a missing value in the
    tables and plots, never a crash: the analysis completes and writes its report."""
    from ccr.analysis.html_report import analyze
    from ccr.study import Study

    for name, lr in (("a", 0.003), ("b", 0.004), ("c", 0.005)):
        Study(tiny_cfg("data.n_tasks=2", "train.epochs=1", f"train.lr={lr}"), tmp_path / "runs" / name,
              progress=False).run()
    res = json.loads((tmp_path / "runs" / "a" / "results.json").read_text())
    del res["config"]["train"]["lr"], res["config"]["tasks"]["pretrain_cache"]
    (tmp_path / "runs" / "a" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path / "runs")
    an = tmp_path / "runs" / "analysis"
    assert (an / "report.html").is_file() and (an / "drift_vs_forgetting.png").is_file()
    assert "cfg.train.lr" in (an / "per_run.csv").read_text()


@pytest.mark.parametrize("sets, needle", [
    (["model.image.patch_size=0"], "config key 'model.image.patch_size': must be >= 1"),
    (["model.image.hidden_size=0"], "config key 'model.image.hidden_size': must be >= 1"),
    (["model.text.max_length=1"], "config key 'model.text.max_length': must be >= 3"),
    (["index.nprobe=0"], "config key 'index.nprobe': must be >= 1"),
    (["index.drift_map_fit=0"], "config key 'index.drift_map_fit': must be >= 1"),
    (["index.hnsw_m=0"], "config key 'index.hnsw_m': must be >= 2"),
    (["tasks.order=[]"], "config key 'tasks.order': an empty list names no task"),
    (["model.image.patch_size=5"], "the image size must be a multiple of the patch size"),
    (["model.text.heads=3"], "the hidden size must be a multiple of the number of heads"),
    (["train.epochs=1000000000"], "config key 'train.epochs': 1000000000 epochs would plan more batches"),
])
def test_sizes_that_cannot_work_are_one_line_before_anything_runs(sets, needle, tiny_overrides, tmp_path, capsys):
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *_sets([*tiny_overrides, *sets])]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path, capsys):
    """9 levels of 8 aliases: 8^9 = 134 million leaves if expanded; the message shows a bounded excerpt."""
    levels = ["&a [x, x, x, x, x, x, x, x]"] + [f"&{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    (tmp_path / "c.yaml").write_text(f"seed: [{', '.join(levels)}]\n")
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "config key 'seed': expected int, got list" in err, err[:600]


def test_a_study_under_a_folder_named_analysis_is_analysed(tiny_cfg, tmp_path):
    from ccr.analysis.load import collect
    from ccr.study import Study

    Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "analysis" / "one", progress=False).run()
    assert list(collect(tmp_path / "runs").runs) == ["analysis/one"]


def test_trial_names_never_collide_and_case_names_yaml_reads_as_booleans_are_refused(tmp_path):
    from ccr.distributed.sweep_spec import load_spec, trial_name

    assert trial_name({"tags.x": "a/b"}) != trial_name({"tags.x": "a_b"})
    assert trial_name({"train.lr": 0.1234567}) != trial_name({"train.lr": 0.12345671})
    assert trial_name({"seed": 1, "train.lr": 0.001}) == "seed=1,train.lr=0.001"  # exact: readable, unchanged
    spec = tmp_path / "s.yaml"
    spec.write_text("grid:\n  flag:\n    yes: {train.lr: 0.1}\n    no: {train.lr: 0.2}\n")
    with pytest.raises(ConfigError, match="has a case named True, which YAML reads from yes/no"):
        load_spec(spec)


def test_optuna_on_the_index_cost_is_allowed_and_test_only_metrics_point_to_a_val_one(tmp_path):
    from ccr.distributed.sweep_spec import load_spec

    base = "set: {data.val_per_task: 4}\noptuna:\n  space: {train.lr: {type: loguniform, low: 0.001, high: 0.01}}\n"
    (tmp_path / "cost.yaml").write_text(base + "  metric: index_cost/embedded\n  mode: min\n")
    assert load_spec(tmp_path / "cost.yaml").optuna["metric"] == "index_cost/embedded"
    (tmp_path / "zs.yaml").write_text(base + "  metric: zero_shot/t2i/R@1\n  mode: max\n")
    with pytest.raises(ConfigError, match="Select on the val split: 'val/t2i/R@1'"):
        load_spec(tmp_path / "zs.yaml")


def test_damaged_caches_are_rebuilt_not_trusted(tmp_path):
    """A truncated decoded-image cache, a killed build's temporary file, a validated-dataset record of the
    wrong shape: each is noticed and rebuilt, never a traceback."""
    from ccr.config import load_config
    from ccr.data import load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path / "d")
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'c'}",
                             "data.image_cache=true", "model.image.image_size=16"])
    first = load_dataset(cfg).images.load(np.arange(4)).numpy()
    (npy,) = (tmp_path / "c" / "images").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    (npy.parent / f".{npy.name}.999999.tmp").write_bytes(b"\0" * 1000)  # a killed build's leftover
    (record,) = (tmp_path / "c" / "datasets").glob("*.json")
    record.write_text(json.dumps({"name": "x", "sources": []}))  # valid JSON, wrong shape
    again = load_dataset(cfg).images.load(np.arange(4)).numpy()
    assert np.array_equal(first, again) and not list(npy.parent.glob(".*.tmp"))


def test_one_task_prints_no_forgetting_and_rsum_shows_once(tiny_cfg, tmp_path):
    from ccr.analysis.html_report import analyze
    from ccr.run_tables import summary_table
    from ccr.study import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "one", progress=False).run()
    row = summary_table(res).splitlines()[1].split()
    assert row[3] == "-" and row[5] == "-"  # forgetting of i2t and t2i: undefined with one task
    analyze(tmp_path / "runs")
    md = (tmp_path / "runs" / "analysis" / "summary.md").read_text()
    assert md.count("| rsum |") == 1 and "1 run (" in md and "**" not in md.split("## What")[0]


@pytest.mark.slow
@pytest.mark.parametrize("sets, needle", [
    (["train.workers=4"], "4 training workers (train.workers x train.cpus_per_worker) needs 4 CPU"),
    (["index.shards=64"], "64 gallery shards (index.shards x index.shard_cpus / shard_gpus) needs 64 CPU"),
])
def test_resources_this_machine_can_never_grant_are_one_line(sets, needle, tiny_overrides, tmp_path):
    """On the Ray ccr starts for itself (which never grows) a request larger than the machine is refused
    before anything trains, naming the key; before, it waited for ever."""
    import os as _os

    env = {k: v for k, v in _os.environ.items() if k != "RAY_ADDRESS"}
    t = time.time()
    run = subprocess.run([sys.executable, "-m", "ccr.cli", "run", "--quiet", "--out", str(tmp_path / "o"),
                          *_sets([*tiny_overrides, "data.n_tasks=2", *sets])], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert run.returncode == 2 and needle in run.stderr, run.stderr[-1500:]
    assert time.time() - t < 120 and not (tmp_path / "o" / "checkpoints").exists()


def test_read_only_caches_and_scratch(tiny_overrides, tmp_path, capsys, monkeypatch):
    """A read-only data.cache_dir is a warning (the study runs, the cache is not kept); a read-only
    CCR_SCRATCH, needed for a study in an object store, is one line naming it."""
    if os.geteuid() == 0:  # root writes through any mode bits: make a "read-only" folder a file's child
        ro = tmp_path / "file"
        ro.write_text("")
        cache, scratch = ro / "cache", ro / "scratch"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        cache, scratch = tmp_path / "ro" / "cache", tmp_path / "ro" / "scratch"
    sets = [*[o for o in tiny_overrides if not o.startswith("data.cache_dir")], f"data.cache_dir={cache}",
            "data.n_tasks=2", "train.epochs=1"]
    assert main(["run", "--out", str(tmp_path / "o"), *_sets(sets)]) == 0
    assert "cannot write the cache file" in capsys.readouterr().err
    from ccr.storage import Storage, StorageError

    monkeypatch.setenv("CCR_SCRATCH", str(scratch))
    with pytest.raises(StorageError, match="point CCR_SCRATCH at a writable folder"):
        Storage("s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http").scratch()


@pytest.mark.parametrize("file, change, needle", [
    ("image_data.json", lambda d: d[2].update(image_id="x7"), r"image_data.json: record 3 is malformed \(ValueError"),
    ("objects.json", lambda d: d[0].update(objects=["dog"]),
     r"objects.json: record 1 is malformed \(TypeError: 'objects'"),
    ("region_descriptions.json", lambda d: d[1].update(regions="a phrase"), r"record 2 is malformed \(TypeError"),
])
def test_malformed_visual_genome_records_are_named(file, change, needle, tmp_path):
    from ccr.config import load_config
    from ccr.data import DataError, load_dataset
    from tests.data_fixtures import make_visual_genome

    paths = make_visual_genome(tmp_path / "vg")
    data = json.loads((paths["path"] / file).read_text())
    change(data)
    (paths["path"] / file).write_text(json.dumps(data))
    cfg = load_config(None, ["data.kind=visual_genome", f"data.path={paths['path']}",
                             f"data.images={paths['images']}", f"data.task_map={paths['task_map']}",
                             f"data.cache_dir={tmp_path / 'c'}"])
    with pytest.raises(DataError, match=needle):
        load_dataset(cfg)
