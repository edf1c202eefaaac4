"""The command line as a user meets it: bad input is one clear line with its exit code, before anything trains."""

from __future__ import annotations

import json

import pytest

from ccr.cli import main
from tests.cli import _sets

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


@pytest.mark.parametrize("case, setup, extra, code, needle", SETUP_CASES, ids=[c[0] for c in SETUP_CASES])
def test_bad_output_folders_and_devices(case, setup, extra, code, needle, tiny_overrides, tmp_path, capsys):
    if setup:
        setup(tmp_path)
    rc = main(["run", "--quiet", "--out", str(tmp_path / "out"), *_sets([*tiny_overrides, *extra])])
    err = capsys.readouterr().err
    assert rc == code and needle in err and "Traceback" not in err and err.count("ccr: error:") == 1, err[-1500:]


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
