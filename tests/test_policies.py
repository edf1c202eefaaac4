"""Indexing policies: which entries each re-embeds, with which model version, at what cost."""

import numpy as np
import pytest

from ccr.config.schema import IndexConfig
from ccr.index.gallery import IndexState
from ccr.index.policies import StepInput, build_policy, fit_linear_map
from tests.test_query import TableEmbedder, make_dataset


class Drifting:
    """Model θ_s: a fixed random rotation of θ_0's table per step (so drift is exactly linear)."""

    def __init__(self, ds, step, d=8):
        base = TableEmbedder(ds.n_images, len(ds.captions), d, seed=0)
        rng = np.random.default_rng(100 + step)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        rot = np.eye(d) if step == 0 else q
        self.table = {m: (t @ rot).astype(np.float32) for m, t in base.table.items()}

    def embed(self, modality, ids):
        return self.table[modality][np.asarray(ids)]


def run_policy(name, n_steps=3, seed=0, **cfg):
    ds = make_dataset(n_tasks=n_steps, per_task=20)
    order = ds.task_names
    icfg = IndexConfig(**cfg)
    pol = build_policy(name, icfg)
    state = IndexState.empty(IndexConfig())
    test_ids = {t: {"images": ds.image_ids(t, "test"), "captions": ds.caption_ids(t, "test")} for t in order}
    models = []
    for step in range(n_steps):
        models.append(Drifting(ds, step))
        prev = models[step - 1] if step else None
        fit = {"images": ds.image_ids(order[step], "train"), "captions": ds.caption_ids(order[step], "train")}
        pol.update(state, StepInput(step, order, models[step], test_ids, prev, fit, seed))
    return ds, order, state, models, test_ids


def test_one_sided_reindexing():
    ds, order, state, models, _ = run_policy("reindex_images")
    first = order[0]
    assert (state.galleries["images"].versions(first) == 2).all()
    assert (state.galleries["captions"].versions(first) == 0).all()
    _, emb, _ = state.galleries["captions"].entries(first)
    np.testing.assert_array_equal(emb, models[0].embed("captions", state.galleries["captions"].ids(first)))
    ds, order, state, _, _ = run_policy("reindex_captions")
    assert (state.galleries["captions"].versions(order[0]) == 2).all()
    assert (state.galleries["images"].versions(order[0]) == 0).all()


def test_backfill_respects_budget_and_takes_oldest_first():
    ds, order, state, _, test_ids = run_policy("backfill", backfill_budget=4)
    per_step = state.cost_per_step
    n_new = [len(test_ids[t]["images"]) for t in order]
    assert per_step[0]["images"] == n_new[0]
    assert per_step[1]["images"] == n_new[1] + 4 and per_step[2]["images"] == n_new[2] + 4
    g = state.galleries["images"]
    v0, v1 = g.versions(order[0]), g.versions(order[1])
    # step 1 refreshed 4 of task 0's 10 entries; step 2 took the 4 oldest left (still version 0), not task 1's
    assert (v0 == 1).sum() == 4 and (v0 == 2).sum() == 4 and (v0 == 0).sum() == 2
    assert (v1 == 1).all()


def test_backfill_fraction_budget():
    ds, order, state, _, test_ids = run_policy("backfill", backfill_budget=0.5)
    n0 = len(test_ids[order[0]]["images"])
    assert state.cost_per_step[1]["images"] == len(test_ids[order[1]]["images"]) + int(np.ceil(0.5 * n0))


def test_drift_map_recovers_a_linear_drift_without_reembedding():
    ds, order, state, models, test_ids = run_policy("drift_map", drift_map_ridge=0.0)
    first = order[0]
    ids, emb, ver = state.galleries["images"].entries(first)
    assert (ver == 0).all()  # never re-embedded
    np.testing.assert_allclose(emb, models[2].embed("images", ids), atol=1e-4)  # but mapped to θ_2's space
    fit_n = len(ds.image_ids(order[1], "train"))
    assert state.cost_per_step[1]["images"] == len(test_ids[order[1]]["images"]) + 2 * fit_n


def test_fit_linear_map_is_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    m = rng.normal(size=(4, 4))
    np.testing.assert_allclose(fit_linear_map(x, x @ m, 0.0), m, atol=1e-4)


@pytest.mark.parametrize("name", ["reindex", "no_reindex", "reindex_images", "reindex_captions", "backfill",
                                  "drift_map"])
def test_every_policy_runs_end_to_end(name, tiny_cfg, tmp_path):
    from ccr.study.runner import Study

    res = Study(tiny_cfg(f"index.policy={name}", "data.n_tasks=2"), tmp_path, progress=False).run()
    assert res["policy"] == name and res["index_cost"]["images_embedded"] > 0


def _refreshed(state, task, step):
    g = state.galleries["images"]
    return set(g.ids(task)[g.versions(task) == step].tolist())


def test_backfill_takes_the_curve_orders_ambiguity_and_random_against_brute_force():
    """index.backfill_order takes the four orders of eval.backfill_orders: `ambiguity` re-embeds the old entries
    whose old embedding has the nearest other entry (brute force here), `random` a seeded draw of its own."""
    ds, order, state, models, test_ids = run_policy("backfill", n_steps=2, backfill_budget=4,
                                                    backfill_order="ambiguity")
    ids = np.sort(test_ids[order[0]]["images"])
    emb = models[0].embed("images", ids)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(axis=1)
    expect = set(ids[np.lexsort((ids, -nearest))[:4]].tolist())
    assert _refreshed(state, order[0], 1) == expect
    from ccr import seeds

    picks = {}
    for seed in (0, 1):
        ds, order, state, _, test_ids = run_policy("backfill", n_steps=2, seed=seed, backfill_budget=4,
                                                   backfill_order="random")
        ids = np.sort(test_ids[order[0]]["images"])
        rng = np.random.default_rng(seeds.task_seed(seed, 1, seeds.BACKFILL_POLICY))  # images: the policy's stream
        picks[seed] = _refreshed(state, order[0], 1)
        assert picks[seed] == set(ids[rng.permutation(len(ids))[:4]].tolist())
    assert picks[0] != picks[1]  # another study seed, another draw
    for o in ("oldest", "random", "drift", "ambiguity"):  # a budget of everything is reindex, in any order
        ds, order, state, _, test_ids = run_policy("backfill", backfill_budget=1.0, backfill_order=o)
        assert (state.galleries["images"].versions(order[0]) == 2).all(), o
