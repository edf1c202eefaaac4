"""θ0's zero-shot row, transfer and control data on the embedded default: definitions against hand
computations from the stored matrices, checkpointing, and the data they need."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccr.config.schema import ConfigError
from ccr.data import DataError, load_dataset
from ccr.index.gallery import IndexState
from ccr.measure.query import evaluate_step
from ccr.study.runner import Study, checkpoint_path

EXTRA = ["data.control_per_task=12", "eval.control=[triangles]", "eval.transfer=true", "data.n_tasks=2",
         "tasks.order=[round,boxes]", "train.threads=1"]


def test_zero_shot_transfer_and_control_by_their_definitions(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*EXTRA)
    study = Study(cfg, tmp_path / "o", progress=False)
    res = study.run()
    n = len(res["task_order"])
    zs = res["zero_shot"]["recall"]
    # the zero-shot row is the untrained model on fresh task galleries: the same as reindex with θ0 at step 0
    assert res["zero_shot"]["gallery"] == "task" and len(zs["t2i"]["1"]) == n
    assert res["metrics"]["zero_shot/t2i/R@1"] == pytest.approx(np.mean(zs["t2i"]["1"]))
    # transfer: a task's mean recall before it was learned, θ0 included; tasks 2..n (task 1 has only θ0's)
    tr = res["transfer"]["recall"]
    for d in ("i2t", "t2i"):
        for k in ("1", "5", "10"):
            per_task = [np.mean([zs[d][k][i]] + [tr[d][k][s][i] for s in range(i)]) for i in range(1, n)]
            assert res["metrics"][f"transfer/{d}/R@{k}"] == pytest.approx(np.mean(per_task))
            assert all(tr[d][k][s][i] is None for s in range(n) for i in range(s + 1))  # only before learning
    # control: row 0 at θ0, then after every task; retention = last / first
    ctl = res["control"]
    assert ctl["tasks"] == ["triangles"] and len(ctl["recall"]["t2i"]["1"]) == n + 1
    last, first = ctl["recall"]["t2i"]["5"][-1][0], ctl["recall"]["t2i"]["5"][0][0]
    assert res["metrics"]["control/t2i/R@5"] == pytest.approx(last)
    assert res["metrics"]["retention/t2i/R@5"] == pytest.approx(100 * last / first)
    # control after the last task equals the final model searched in the control task's own gallery
    emb = study.embedder(study.model)
    fresh = IndexState.empty(cfg.index)
    ids = {"images": study.ds.image_ids("triangles", "test"), "captions": study.ds.caption_ids("triangles", "test")}
    for m, v in ids.items():
        fresh.galleries[m].put("triangles", v, emb.embed(m, v), 0)
    rows = evaluate_step(fresh, emb, study.ds, ["triangles"], "task", [5])
    assert rows["t2i"]["triangles"][5] == pytest.approx(last)
    # never trained: the control task is in no training batch and not in the order
    assert "triangles" not in res["task_order"]


def test_zero_shot_row_survives_a_resume(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*EXTRA)
    full = Study(cfg, tmp_path / "a", progress=False).run()
    Study(cfg, tmp_path / "b", progress=False).run()
    checkpoint_path(tmp_path / "b", 1, full["task_order"]).unlink()  # as if killed during task 2
    (tmp_path / "b" / "results.json").unlink()
    again = Study(cfg, tmp_path / "b", progress=False).run()
    assert again["resumes"] == [0]
    for key in ("zero_shot", "transfer", "control"):
        assert again[key] == full[key], key
    assert again["anatomy"]["stability_from_init"] == full["anatomy"]["stability_from_init"]


def test_scratch_zero_shot_is_chance_and_seen_scope_uses_the_growing_gallery(tiny_cfg, tmp_path):
    """From scratch θ0 is a random model: its zero-shot row is near chance. In seen scope task i is searched
    among tasks 1..i (as it will be once learned), so the first task's entry equals task scope's."""
    task = Study(tiny_cfg("data.n_tasks=2", "train.threads=1"), tmp_path / "t", progress=False).run()
    seen = Study(tiny_cfg("data.n_tasks=2", "train.threads=1", "eval.scope=seen"), tmp_path / "s",
                 progress=False).run()
    assert seen["zero_shot"]["gallery"] == "seen"
    assert seen["zero_shot"]["recall"]["t2i"]["1"][0] == task["zero_shot"]["recall"]["t2i"]["1"][0]
    # 12 test images per task: chance R@10 in task scope is 10/12 of the captions' images... ~83 %; R@1 ~8 %
    assert task["metrics"]["zero_shot/t2i/R@1"] < 40


def test_control_data_of_the_generated_default_leaves_the_other_images_as_they_were(tiny_cfg):
    plain = load_dataset(tiny_cfg())
    more = load_dataset(tiny_cfg("data.control_per_task=5"))
    n = plain.n_images
    assert np.array_equal(plain.images.load(np.arange(n)).numpy(), more.images.load(np.arange(n)).numpy())
    assert more.task_names[-3:] == ["crosses", "bars", "diamonds"] and more.info["control_only"][0] == "crosses"
    assert len(more.image_ids("crosses", "test")) == 5 and len(more.image_ids("crosses", "train")) == 0


@pytest.mark.parametrize("sets, error, match", [
    (["eval.control=[round]", "tasks.order=[round,boxes]"], ConfigError, r"eval.control.*trained"),
    (["eval.control=[diamonds]"], DataError, r"unknown task.*data.control_per_task"),
    (["eval.control=[diamonds]", "data.control_per_task=1"], DataError, r"eval.control: tasks with fewer than 2"),
])
def test_bad_control_data_is_refused_before_training(tiny_cfg, tmp_path, sets, error, match):
    with pytest.raises(error, match=match):
        Study(tiny_cfg(*sets), tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_a_control_task_leaves_the_natural_and_random_orders(tiny_cfg, tmp_path):
    for order in ("null", "random"):
        study = Study(tiny_cfg("data.n_tasks=3", "eval.control=[boxes]", f"tasks.order={order}"), tmp_path / order)
        assert sorted(study.order) == ["round", "triangles"]


def test_results_without_zero_shot_still_analyse(tiny_cfg, tmp_path):
    """Results of an earlier ccr (no zero_shot, transfer, control) load and plot as before."""
    from ccr.analysis.html_report import analyze

    res = Study(tiny_cfg("data.n_tasks=2", "train.threads=1"), tmp_path / "runs" / "new", progress=False).run()
    old = {k: v for k, v in res.items() if k not in ("zero_shot", "transfer", "control")}
    old["metrics"] = {k: v for k, v in old["metrics"].items() if not k.startswith("zero_shot/")}
    (tmp_path / "runs" / "old").mkdir()
    (tmp_path / "runs" / "old" / "results.json").write_text(json.dumps(old))
    out = analyze(tmp_path / "runs")
    summary = (tmp_path / "runs" / "analysis" / "summary.md").read_text()
    assert "What the model could do before the first task" in summary and out
