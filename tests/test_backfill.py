"""The economics of re-indexing: the backfill curve against the policies it generalises, negative flips
against a brute-force reference and a hand-computed case, and the approximate index under each policy."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ccr.measure.evaluation import Evaluator
from ccr.measure.metrics import first_hit, negative_flips
from ccr.study.configure import load_config
from ccr.study.runner import Study
from tests.test_policies import Drifting
from tests.test_query import make_dataset


def test_negative_flips_by_hand():
    """Four queries: ranks of their true item before and after an update."""
    owners_before = np.array([[7, 1, 2], [1, 2, 3], [9, 9, 9], [4, 5, 8]])
    owners_after = np.array([[1, 7, 2], [2, 3, 1], [9, 1, 1], [6, 5, 4]])
    truth = np.array([7, 1, 9, 6])
    before, after = first_hit(owners_before, truth), first_hit(owners_after, truth)
    assert before.tolist()[:3] == [0, 0, 0] and before[3] > 3  # query 4 was a miss
    assert after.tolist() == [1, 2, 0, 0]
    assert negative_flips(before, after, 1) == (2, 4)  # queries 1 and 2 were hits at R@1 and are not
    assert negative_flips(before, after, 2) == (1, 4)  # query 2 only: query 1 is still in the top 2
    assert negative_flips(before, after, 3) == (0, 4)


class Model:
    """θ_s of tests.test_policies.Drifting, as an Embedder (counting what it embeds)."""

    def __init__(self, ds, step):
        self.table = Drifting(ds, step).table
        self.computed, self.seconds = {"images": 0, "captions": 0}, {"images": 0.0, "captions": 0.0}

    def embed(self, modality, ids):
        self.computed[modality] += len(ids)
        return self.table[modality][np.asarray(ids)]


def hits(ds, q_model, g_models, task, k):
    """Brute force: per query of `task`, a hit at R@k with queries by q_model and each gallery task embedded by
    its model in g_models ({task: model}); task scope."""
    img, cap = ds.image_ids(task, "test"), ds.caption_ids(task, "test")
    g = g_models[task]
    s = q_model.table["images"][img] @ g.table["captions"][cap].T
    top = ds.caption_image[cap][np.argsort(-s, axis=1, kind="stable")[:, :k]]
    i2t = (top == img[:, None]).any(1)
    s = q_model.table["captions"][cap] @ g.table["images"][img].T
    top = img[np.argsort(-s, axis=1, kind="stable")[:, :k]]
    t2i = (top == ds.caption_image[cap][:, None]).any(1)
    return {"i2t": i2t, "t2i": t2i}


def test_negative_flips_and_backfill_endpoints_against_brute_force():
    """Three steps of drifting models: each policy's negative flips equal a brute-force count, and the backfill
    curve at 0 and 1 equals no_reindex's and reindex's row means exactly (every order)."""
    ds = make_dataset(n_tasks=3, per_task=24)
    order = ds.task_names
    cfg = load_config(None, ["index.compare=[no_reindex]", "eval.anatomy=false", "eval.ks=[1,3]",
                             "eval.backfill_curve=[0, 0.5, 1]"])
    ev = Evaluator(cfg, ds, order)
    models = [Model(ds, s) for s in range(3)]
    for s in range(3):
        ev.step(s, models[s], models[s - 1] if s else None)
    for policy in ("reindex", "no_reindex"):
        flips = ev.policy_results(policy, 3)["negative_flips"]
        for d in ("i2t", "t2i"):
            for k in (1, 3):
                assert flips[d][str(k)][0] is None  # no update before the first task
                for s in (1, 2):
                    def gallery(step, t, policy=policy):
                        return models[step] if policy == "reindex" else models[order.index(t)]

                    was = [hits(ds, models[s - 1], {t: gallery(s - 1, t)}, t, k)[d] for t in order[:s]]
                    now = [hits(ds, models[s], {t: gallery(s, t)}, t, k)[d] for t in order[:s]]
                    expect = 100 * sum(int((w & ~n).sum()) for w, n in zip(was, now, strict=True)) / sum(
                        len(w) for w in was)
                    assert flips[d][str(k)][s] == pytest.approx(expect, abs=1e-9), (policy, d, k, s)
    recall = {p: ev.policy_results(p, 3)["recall"] for p in ("reindex", "no_reindex")}
    curve = ev.curve.results(3)
    assert {r["order"] for r in curve} == {"oldest", "random", "drift", "ambiguity"}
    for r in curve:
        d, k, s = r["direction"], str(r["k"]), r["step"]
        n_old = sum(len(ds.image_ids(t, "test")) for t in order[:s])
        assert r["old_images"] == n_old and r["images"] == math.ceil(r["fraction"] * n_old)
        if r["fraction"] in (0.0, 1.0):
            row = recall["no_reindex" if r["fraction"] == 0 else "reindex"][d][k][s][: s + 1]
            assert r["recall"] == np.mean(row), r  # exact: the same embeddings, the same search
    # half the old gallery re-embedded: in between, and the orders disagree somewhere
    mid = [r["recall"] for r in curve if r["fraction"] == 0.5 and r["step"] == 2]
    assert len(set(mid)) > 1


def test_the_orders_pick_what_they_say():
    from ccr.index.backfill import backfill_rank, chosen

    ids = np.array([5, 3, 9, 1])
    version = np.array([1, 0, 1, 0])
    emb = np.eye(4, dtype=np.float32)
    emb[2] = emb[0] * 0.8 + emb[1] * 0.6  # items 9 and 5 are the closest pair: the most ambiguous
    rng = np.random.default_rng(0)
    assert ids[backfill_rank("oldest", ids, version, emb, rng)].tolist() == [1, 3, 5, 9]
    assert set(ids[backfill_rank("ambiguity", ids, version, emb, rng)][:2]) == {5, 9}
    mat = np.diag([1, 1, 1, -1]).astype(np.float32)  # only item 1's embedding moves
    assert ids[backfill_rank("drift", ids, version, emb, rng, mat)][0] == 1
    assert sorted(ids[backfill_rank("random", ids, version, emb, rng)]) == [1, 3, 5, 9]
    assert [chosen(10, f) for f in (0, 0.1, 0.25, 1)] == [0, 1, 3, 10]


@pytest.mark.parametrize("retrain, trained_at", [("never", [0]), ("reindexed", [0, 1, 2]), ("always", [0, 1, 2])])
def test_the_approximate_index_is_trained_again_when_the_policy_says(retrain, trained_at, tiny_cfg, tmp_path):
    cfg = tiny_cfg("data.n_tasks=3", "train.epochs=1", "index.approx=ivf", "index.nlist=4", "index.nprobe=1",
                   f"index.approx_retrain={retrain}", "index.compare=[no_reindex]", "eval.anatomy=false")
    res = Study(cfg, tmp_path / "s", progress=False).run()
    for policy, expect in (("reindex", trained_at), ("no_reindex", [0, 1, 2] if retrain == "always" else [0])):
        q = res["by_policy"][policy]["index_quality"]
        assert q["retrain"] == retrain
        for m in ("images", "captions"):
            assert [t["step"] for t in q["trainings"][m]] == expect, (policy, m)
            assert len(q["per_step"][m]) == 3 and all(0 <= v <= 1 for v in q["per_step"][m])


def test_cost_at_scale_is_linear_in_n_and_in_proportion_to_what_each_policy_embeds(tiny_cfg, tmp_path, capsys):
    import pandas as pd

    from ccr.cli import main

    cfg = tiny_cfg("data.n_tasks=3", "train.epochs=1", "index.compare=[no_reindex]", "eval.backfill_curve=[0,0.5,1]",
                   "eval.backfill_orders=[oldest,random]")
    res = Study(cfg, tmp_path / "runs" / "a", progress=False).run()
    emb = res["embedding"]
    assert emb["device"] == "cpu" and emb["images"]["per_second"] > 0 and emb["captions"]["per_second"] > 0
    tables = {}
    for n in (10**6, 10**9):
        out = tmp_path / f"an{n}"
        assert main(["analyze", str(tmp_path / "runs"), "--out", str(out), "--gallery-size", str(n),
                     "--device-hour-price", "2.5", "--images-per-second", "5000",
                     "--captions-per-second", "20000"]) == 0
        tables[n] = pd.read_csv(out / "cost_at_scale.csv").set_index("policy")
        assert "Cost at a gallery of" in (out / "summary.md").read_text()
        assert (out / "cost_at_scale.md").is_file() and (out / "cost_at_scale_R1.png").is_file()
        assert (out / "backfill_curve_t2i_R1.png").is_file()
        assert "Backfill after the last task" in capsys.readouterr().out
    small, big = tables[10**6], tables[10**9]
    for col in ("images_per_update", "captions_per_update", "device_hours", "device_hours_sequence",
                "device_hours_given", "usd", "usd_sequence_given"):
        assert np.allclose(big[col], 1000 * small[col]), col  # linear in N
    assert np.allclose(big.usd, 2.5 * big.device_hours)
    cost = {p: res["by_policy"][p]["index_cost"] for p in ("reindex", "no_reindex")}
    for p, c in cost.items():  # over the sequence: what the policy embedded, scaled to N images, at the throughput
        alpha = 10**9 / 36  # the generated tiny tasks have 12 test images each
        hours = alpha * (c["images_embedded"] / 5000 + c["captions_embedded"] / 20000) / 3600
        assert big.loc[p, "device_hours_sequence_given"] == pytest.approx(hours)
    ratio = big.loc["reindex", "images_sequence"] / big.loc["no_reindex", "images_sequence"]
    assert ratio == pytest.approx(cost["reindex"]["images_embedded"] / cost["no_reindex"]["images_embedded"])
    assert big.loc["reindex", "device_hours"] > big.loc["no_reindex", "device_hours"]


def test_cost_options_need_a_gallery_size(tmp_path, capsys):
    from ccr.cli import main

    assert main(["analyze", str(tmp_path / "nothing"), "--device-hour-price", "3"]) == 2
    assert "--device-hour-price needs --gallery-size N" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, needle", [
    ({"gallery_size": 0}, "gallery size must be a whole number from 1 to 1e+13, got 0"),
    ({"gallery_size": -5}, "got -5"),
    ({"gallery_size": float("nan")}, "gallery size must be a whole number"),
    ({"gallery_size": 10**400}, "characters)"),
    ({"gallery_size": 10, "price": -3.5}, "device-hour price must be a finite number above 0 up to 1e+06, got -3.5"),
    ({"gallery_size": 10, "price": float("inf")}, "device-hour price must be a finite number"),
    ({"gallery_size": 10, "images_per_second": 5.0}, "images per second and captions per second go together"),
    ({"gallery_size": 10, "images_per_second": float("inf"), "captions_per_second": 5.0}, "images per second must"),
    ({"gallery_size": 10, "images_per_second": 1e308, "captions_per_second": 5.0}, "up to 1e+12, got 1e+308"),
    ({"gallery_size": 10, "images_per_second": 5.0, "captions_per_second": 1e-300}, "from 0.001 up to"),
])
def test_cost_values_are_checked_in_one_place_for_the_cli_and_python(kwargs, needle, tmp_path, capsys):
    """The same refusal, before anything is read, whether the user runs `ccr analyze` or `ccr.analyze()`."""
    import ccr
    from ccr.cli import main
    from ccr.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(needle)):
        ccr.analyze(tmp_path / "nothing", **kwargs)
    flags = {"gallery_size": "--gallery-size", "price": "--device-hour-price",
             "images_per_second": "--images-per-second", "captions_per_second": "--captions-per-second"}
    if isinstance(kwargs["gallery_size"], float):
        return  # argparse itself refuses a gallery size that is no whole number
    argv = [x for k, v in kwargs.items() for x in (flags[k], str(v))]
    assert main(["analyze", str(tmp_path / "nothing"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "nothing").exists()


def test_runs_of_one_model_are_priced_at_one_throughput_so_equal_work_costs_the_same(tiny_cfg, tmp_path):
    """Each run measures its own embedding speed from about a second of work; two runs of the same model on the
    same device that measured 1,000 and 3,000 images/s are both priced at the median (2,000), so the same
    embeddings cost the same device-hours. A run of another model keeps its own."""
    import json
    import shutil

    from ccr.analysis.economics import Scale, cost_rows

    Study(tiny_cfg("data.n_tasks=2", "train.epochs=1", "train.threads=1"), tmp_path / "runs" / "a",
          progress=False).run()
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "runs" / "b")
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "runs" / "other")
    for name, ips, cps, strategy in (("a", 1000.0, 4000.0, "finetune"), ("b", 3000.0, 8000.0, "lwf"),
                                     ("other", 500.0, 700.0, "ewc")):
        p = tmp_path / "runs" / name / "results.json"
        res = json.loads(p.read_text())
        res["embedding"]["images"]["per_second"], res["embedding"]["captions"]["per_second"] = ips, cps
        res["strategy"] = strategy
        if name == "other":
            res["config"]["model"]["embed_dim"] = 99  # another model
        p.write_text(json.dumps(res))
    from ccr.analysis.load import collect

    rows = cost_rows(collect(tmp_path / "runs").runs, Scale(10**9), 1).set_index(["strategy", "policy"])
    a, b, other = (rows.loc[(s, "reindex")] for s in ("finetune", "lwf", "ewc"))
    assert a.images_per_second == b.images_per_second == 2000.0 and a.captions_per_second == 6000.0
    assert a.throughput_runs == b.throughput_runs == 2 and other.throughput_runs == 1
    assert a.device_hours == pytest.approx(b.device_hours) and other.images_per_second == 500.0
    hours = (a.images_per_update / 2000.0 + a.captions_per_update / 6000.0) / 3600
    assert a.device_hours == pytest.approx(hours)
