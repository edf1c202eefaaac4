"""The field's table: Transfer, Avg. and Last against ZSCL's formula on a hand-made matrix, the joined matrix of
a study, and the table `ccr analyze` writes with its cost columns, checked against the studies themselves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ccr.analysis.field import full_matrix, zscl_metrics
from ccr.study.runner import Study
from tests.test_classification import make_imagefolder


def zscl_statistics(arr: np.ndarray) -> tuple[float, float, float]:
    """ZSCL's `statistics` (github.com/Thunderbeee/ZSCL, mtil/results.ipynb) as published: rows are the model
    after each task, columns the tasks; returns (transfer, avg, last)."""
    n = arr.shape[0]
    avg = arr.mean(axis=0)
    last = np.array(arr[-1, :])
    transfer = np.array([np.mean([arr[j, i] for j in range(i)]) for i in range(1, n)])
    return transfer.mean(), avg.mean(), last.mean()


def test_transfer_avg_and_last_are_zscls_on_a_hand_made_matrix():
    a = np.array([[80.0, 10.0, 20.0, 30.0],
                  [60.0, 70.0, 25.0, 35.0],
                  [50.0, 65.0, 90.0, 40.0],
                  [40.0, 55.0, 85.0, 75.0]])
    got = zscl_metrics(a)
    ref = zscl_statistics(a)
    assert (got["Transfer"], got["Avg."], got["Last"]) == pytest.approx(ref)
    # by hand: transfer of task 2 = 10, task 3 = (20 + 25) / 2, task 4 = (30 + 35 + 40) / 3
    assert got["Transfer"] == pytest.approx((10 + 22.5 + 35) / 3)
    assert got["Last"] == pytest.approx((40 + 55 + 85 + 75) / 4)
    assert got["Avg."] == pytest.approx(a.sum() / 16)
    # without the steps before each task (eval.transfer off), Transfer and Avg. are not known; Last is
    lower = np.where(np.tril(np.ones((4, 4), bool)), a, np.nan)
    m = zscl_metrics(lower)
    assert np.isnan(m["Transfer"]) and np.isnan(m["Avg."]) and m["Last"] == got["Last"]


def test_the_field_table_of_two_studies_from_their_results(tiny_cfg, tmp_path):
    from ccr.analysis.html_report import analyze

    images = make_imagefolder(tmp_path / "shapes", {"round_thing": 3, "box": 3})
    common = ["data.n_tasks=3", "train.threads=1", "eval.transfer=true", "eval.anatomy=false",
              f"eval.classification=[{{name: shapes, path: {images}}}]", "index.compare=[no_reindex]"]
    studies = {}
    for s in ("finetune", "replay"):
        study = Study(tiny_cfg(*common, f"strategy.name={s}"), tmp_path / "runs" / s, progress=False)
        studies[s] = (study, study.run())
    out = analyze(tmp_path / "runs", tmp_path / "analysis")
    table = pd.read_csv(out / "field_table.csv")
    assert list(table["strategy"][:1]) == ["zero-shot (θ0)"]
    for s, (study, res) in studies.items():
        for policy in ("reindex", "no_reindex"):
            row = table[(table["strategy"] == s) & (table["policy"] == policy)].iloc[0]
            for d in ("i2t", "t2i"):
                lower = np.array(res["by_policy"][policy]["recall"][d]["1"], dtype=float)
                upper = np.array(res["transfer"]["recall"][d]["1"], dtype=float)
                a = np.where(np.isnan(lower), upper, lower)
                assert np.array_equal(full_matrix(res, policy, d, 1), a, equal_nan=True)
                ref = zscl_statistics(a)
                assert (row[f"{d} Transfer"], row[f"{d} Avg."], row[f"{d} Last"]) == pytest.approx(ref)
            assert row["shapes top-1"] == pytest.approx(res["classification"]["shapes"]["top1"][-1])
        # costs, from the study itself
        trainable = sum(p.numel() for p in study.model.parameters() if p.requires_grad)
        assert row["trainable params (M)"] == pytest.approx(trainable / 1e6)
        assert row["train device-hours"] == pytest.approx(sum(t["seconds"] for t in res["train"]) / 3600)
        assert row["peak memory (MiB)"] > 0
    zero = table.iloc[0]
    z = np.array(studies["finetune"][1]["zero_shot"]["recall"]["t2i"]["1"])
    assert zero["t2i Transfer"] == pytest.approx(z[1:].mean()) and zero["t2i Last"] == pytest.approx(z.mean())
    assert zero["shapes top-1"] == pytest.approx(studies["finetune"][1]["classification"]["shapes"]["top1"][0])
    # extra storage: finetune keeps nothing; replay its memory, each image at the model's input size (uint8)
    # and its caption's text, computed here from the dataset
    fine = table[table["strategy"] == "finetune"].iloc[0]
    assert fine["extra storage (MB)"] == 0
    study, res = studies["replay"]
    imgs, caps = study.strategy.memory.pairs()
    side = study.ds.images.image_size
    items = len(imgs) * 3 * side * side + sum(len(study.ds.captions[c].encode()) for c in caps)
    ids = sum(a.nbytes + b.nbytes for a, b in study.strategy.memory.tasks.values())
    assert len(imgs) > 0 and res["train"][-1]["kept_images"] == len(imgs)
    rep = table[table["strategy"] == "replay"].iloc[0]
    assert rep["extra storage (MB)"] == pytest.approx((items + ids) / 1e6)
    md = (out / "field_table.md").read_text()
    tex = (out / "field_table.tex").read_text()
    assert "| zero-shot (θ0) |" in md and "extra storage (MB)" in md
    assert tex.startswith(r"\begin{tabular}") and r"zero-shot ($\theta$0)" in tex and r"\bottomrule" in tex
    assert "field's table" not in (out / "summary.md").read_text()  # summary.md: results only, no measurement
    assert "The field's table" in (out / "report.html").read_text() and "<td>zero-shot (θ0)</td>" in (
        out / "report.html").read_text()
    assert json.loads((out / "status.json").read_text())["runs"] == 2
