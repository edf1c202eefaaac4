"""The results schema (ccr/measure/results.py) and its checks (results_check.py): every version reads as the
current one, and no file that is not a ccr result aborts an analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccr.analysis.html_report import analyze
from ccr.analysis.load import collect, per_run_summary
from ccr.cli import main
from ccr.study.runner import checkpoint_path
from tests.test_analysis import fake_result


def results_matrix(rows):

    return np.array([[np.nan if v is None else v for v in r] for r in rows])


def test_old_and_new_results_read_the_same(tmp_path):
    """Results written before schema_version existed (schema 1, nested `summary`) and results of the current
    schema for the same recall matrices give the same records, tables and Tune metrics."""

    from ccr.measure import results

    old = fake_result("finetune", 0, 20.0, 10.0)
    mats = {d: {1: results_matrix(old["recall"][d]["1"])} for d in ("i2t", "t2i")}
    pol = results.policy_results(mats, {"images_embedded": 100, "captions_embedded": 200, "seconds": 0.0,
                                        "per_step": []}, None)
    new = results.study_results("reindex", {"reindex": pol}, **{k: v for k, v in old.items() if k not in
                                                                ("recall", "summary", "index_cost", "by_policy")})
    assert new["schema_version"] == results.SCHEMA_VERSION and "schema_version" not in old
    up = results.upgrade(old)
    assert up["metrics"] == {k: v for k, v in new["metrics"].items() if k not in ("rsum", "index_cost/seconds")} | {
        "index_cost/seconds": 0.0}
    strip = [{k: v for k, v in r.items() if k != "rsum"} for r in results.summary_records(new)]
    assert [{k: v for k, v in r.items() if k != "rsum"} for r in results.summary_records(old)] == strip
    assert list(results.matrix_records(old)) == list(results.matrix_records(new))
    for name, res in (("old", old), ("new", new)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    c = collect(tmp_path)
    assert not c.corrupt and set(c.runs) == {"old", "new"}
    s = per_run_summary(c).set_index("run")
    assert s.loc["old", "avg_final_recall"].tolist() == s.loc["new", "avg_final_recall"].tolist() == [20.0, 20.0]
    assert np.isnan(s.loc["old", "rsum"]).all() and (s.loc["new", "rsum"] == 2 * 20.0).all()  # only R@1 measured
    with pytest.raises(ValueError, match="newer than this ccr reads"):
        results.upgrade({**new, "schema_version": 99})


def test_stability_was_named_drift_before_schema_3(tiny_cfg, tmp_path):
    """The anatomy's cosine (higher = less drift) was called `drift` in schema 2 and in checkpoints of that
    release: both read as `stability`, in records, tables and a resumed study."""
    from ccr.io.checkpoint import from_bytes, to_bytes
    from ccr.measure import results, results_check
    from ccr.measure.tables import anatomy_table
    from ccr.study.runner import Study

    cfg = tiny_cfg("data.n_tasks=2", "train.epochs=1")
    new = Study(cfg, tmp_path / "a", progress=False).run()
    old = json.loads(json.dumps(new))
    old["schema_version"] = 2
    old["anatomy"]["drift"] = old["anatomy"].pop("stability")
    assert results_check.problem(old) is None
    assert results.upgrade(old)["anatomy"] == new["anatomy"]
    assert list(results.matrix_records(old)) == list(results.matrix_records(new))
    assert {r["metric"] for r in results.matrix_records(old)} >= {"stability", "alignment"}
    assert "stab img" in anatomy_table(results.upgrade(old))
    # a checkpoint written by that release resumes, its anatomy renamed
    ck = checkpoint_path(tmp_path / "a", 0, new["task_order"])
    state = from_bytes(ck.read_bytes(), ck.name)
    state["evaluator"]["anatomy"]["drift"] = state["evaluator"]["anatomy"].pop("stability")
    ck.write_bytes(to_bytes(state))
    checkpoint_path(tmp_path / "a", 1, new["task_order"]).unlink()
    (tmp_path / "a" / "results.json").unlink()
    again = Study(cfg, tmp_path / "a", progress=False).run()
    assert again["resumes"] == [0] and again["anatomy"] == new["anatomy"]


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


def test_no_crafted_results_file_aborts_an_analysis(tiny_cfg, tmp_path, capsys):
    """Every field of a real results.json (anatomy, zero-shot, transfer, control, flips, backfill curve and the
    config included) replaced by a value of another type, one at a time: each file is either named and skipped
    as not a ccr result, or analysed; the analysis of all of them together completes."""
    import copy
    import math

    from ccr.analysis.load import collect
    from ccr.measure.results_check import problem
    from ccr.study.runner import Study

    cfg = tiny_cfg("data.n_tasks=3", "train.epochs=1", "eval.transfer=true", "eval.backfill_curve=[0,1]",
                   "eval.backfill_orders=[oldest]", "index.compare=[no_reindex]", "eval.ks=[1,5]")
    good = Study(cfg, tmp_path / "study", progress=False).run()

    def paths(o, pre=(), depth=0):  # every field to depth 2; below, the first 3 keys of each object (the rest
        yield pre                      # repeat their shape: more tasks, K, policies) and the first list item
        if depth < (3 if pre[:1] == ("config",) else 6):
            if isinstance(o, dict):
                for k in list(o) if depth < 2 else list(o)[:3]:
                    yield from paths(o[k], (*pre, k), depth + 1)
            elif isinstance(o, list) and o:
                yield from paths(o[0], (*pre, 0), depth + 1)

    bad = [None, "x", [], {"x": 1}, True, math.nan]
    runs, skipped = tmp_path / "runs", 0
    for i, path in enumerate(p for p in paths(good) if p):
        for j, value in enumerate(bad):
            res = copy.deepcopy(good)
            node = res
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            text = json.dumps(res)
            skipped += bool(problem(json.loads(text)))
            (runs / f"m{i}_{j}").mkdir(parents=True)
            (runs / f"m{i}_{j}" / "results.json").write_text(text)
    c = collect(runs)
    assert len(c.corrupt) == skipped and len(c.runs) + skipped == len(list(runs.glob("*/results.json")))
    assert all(why and len(why) < 200 for _, why in c.corrupt)
    assert main(["analyze", str(runs), "--gallery-size", "1000000", "--device-hour-price", "2"]) == 0
    assert (runs / "analysis" / "report.html").is_file() and (runs / "analysis" / "cost_at_scale.md").is_file()
