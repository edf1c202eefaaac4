"""Recall computed through galleries, FAISS and the policies equals a brute-force numpy reference."""

import numpy as np
import pytest

from ccr.config.schema import IndexConfig
from ccr.data.dataset import ArrayImages, RetrievalDataset
from ccr.index.gallery import IndexState
from ccr.index.policies import StepInput, build_policy
from ccr.index.search import FlatIndex, merge_topk
from ccr.measure.query import evaluate_step


class TableEmbedder:
    """A fake model: fixed random unit vectors per item."""

    def __init__(self, n_img, n_cap, d, seed):
        rng = np.random.default_rng(seed)
        self.table = {m: rng.normal(size=(n, d)).astype(np.float32) for m, n in (("images", n_img),
                                                                                  ("captions", n_cap))}
        for t in self.table.values():
            t /= np.linalg.norm(t, axis=1, keepdims=True)

    def embed(self, modality, ids):
        return self.table[modality][np.asarray(ids)]


def make_dataset(n_tasks=3, per_task=20, caps=3, seed=0):
    rng = np.random.default_rng(seed)
    tasks, split, names = [], [], []
    for t in range(n_tasks):
        for j in range(per_task):
            tasks.append(f"t{t}")
            split.append("test" if j % 2 == 0 else "train")
            names.append(f"{t}_{j}.png")
    n = len(names)
    cap_img = np.repeat(np.arange(n), caps)
    rng.shuffle(cap_img)  # captions of an image are not contiguous: ids must still map back
    return RetrievalDataset("fake", names, np.array(split), np.array(tasks), [f"c{i}" for i in range(len(cap_img))],
                            cap_img, ArrayImages(np.zeros((n, 3, 2, 2), np.uint8)), [f"t{t}" for t in range(n_tasks)])


def brute_force(ds, emb, seen, task, scope, ks):
    where = [task] if scope == "task" else seen
    g_img = ds.image_ids(where, "test")
    g_cap = ds.caption_ids(where, "test")
    q_img = ds.image_ids(task, "test")
    q_cap = ds.caption_ids(task, "test")
    out = {}
    # i2t
    sims = emb.embed("images", q_img) @ emb.embed("captions", g_cap).T
    ranked = np.argsort(-sims, axis=1, kind="stable")
    owners = ds.caption_image[g_cap][ranked]
    out["i2t"] = {k: 100 * np.mean([(owners[r, :k] == q_img[r]).any() for r in range(len(q_img))]) for k in ks}
    sims = emb.embed("captions", q_cap) @ emb.embed("images", g_img).T
    ranked = g_img[np.argsort(-sims, axis=1, kind="stable")]
    truth = ds.caption_image[q_cap]
    out["t2i"] = {k: 100 * np.mean([(ranked[r, :k] == truth[r]).any() for r in range(len(q_cap))]) for k in ks}
    return out


@pytest.mark.parametrize("scope", ["task", "seen"])
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_recall_matches_brute_force(scope, backend):
    ds = make_dataset()
    emb = TableEmbedder(ds.n_images, len(ds.captions), 8, seed=1)
    order, ks = ds.task_names, [1, 5, 10]
    state = IndexState.empty(IndexConfig(backend=backend))
    policy = build_policy("reindex", IndexConfig())
    test_ids = {t: {"images": ds.image_ids(t, "test"), "captions": ds.caption_ids(t, "test")} for t in order}
    for step in range(len(order)):
        policy.update(state, StepInput(step, order, emb, test_ids))
        seen = order[: step + 1]
        got = evaluate_step(state, emb, ds, seen, scope, ks)
        for task in seen:
            ref = brute_force(ds, emb, seen, task, scope, ks)
            for d in ("i2t", "t2i"):
                for k in ks:
                    assert got[d][task][k] == pytest.approx(ref[d][k]), (d, task, k, scope)


def test_seen_scope_is_harder_than_task_scope():
    ds = make_dataset(per_task=40)
    emb = TableEmbedder(ds.n_images, len(ds.captions), 4, seed=3)
    order = ds.task_names
    state = IndexState.empty(IndexConfig())
    test_ids = {t: {"images": ds.image_ids(t, "test"), "captions": ds.caption_ids(t, "test")} for t in order}
    pol = build_policy("no_reindex", IndexConfig())
    for step in range(3):
        pol.update(state, StepInput(step, order, emb, test_ids))
    task = evaluate_step(state, emb, ds, order, "task", [10])
    seen = evaluate_step(state, emb, ds, order, "seen", [10])
    for t in order:
        assert seen["t2i"][t][10] <= task["t2i"][t][10]


@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_merged_parts_equal_one_flat_index_with_ties(n_parts):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs[150:180] = vecs[0]  # exact ties with item 0
    ids = np.arange(1000, 1300)
    q = np.concatenate([vecs[:1], rng.normal(size=(20, 16)).astype(np.float32)])
    ref_s, ref_i = FlatIndex(vecs, ids).search(q, 10)
    bounds = np.linspace(0, 300, n_parts + 1).astype(int)
    parts = [FlatIndex(vecs[a:b], ids[a:b]).search(q, 10) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    s, i = merge_topk(parts, 10)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-6)
    # ties resolve by the smaller id
    assert i[0].tolist() == [1000] + list(range(1150, 1159))


@pytest.mark.parametrize("opq", [False, True])
def test_ivfpq_answers_as_raw_faiss_built_the_same_way(opq):
    """index.approx=ivfpq against faiss's own IndexIVFPQ (and OPQ rotation) trained on the same sample: the same
    neighbours and scores, the code size capped where the sample is too small for 2^pq_nbits centroids."""
    import faiss

    from ccr.index.search import ApproxIndex, train_template

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    cfg = IndexConfig(approx="ivfpq", nlist=8, nprobe=3, pq_m=8, pq_nbits=5, opq=opq)  # 5 bits: faiss trains fast
    template, sizes = train_template(cfg, x[:300])
    assert sizes == {"nlist": 8, "pq_m": 8, "pq_nbits": 5, "opq": int(opq)}
    ids = np.arange(1000, 1600)
    got_s, got_i = ApproxIndex(x, ids, template, nprobe=3).search(q, 10)

    faiss.omp_set_num_threads(1)
    ref = faiss.index_factory(32, ("OPQ8," if opq else "") + "IVF8,PQ8x5", faiss.METRIC_INNER_PRODUCT)
    ref.train(x[:300])
    ref.add(x)
    faiss.extract_index_ivf(ref).nprobe = 3
    want_s, want_p = ref.search(q, 10)
    assert np.allclose(got_s, want_s, atol=1e-5)
    for g, w, s in zip(got_i - 1000, want_p, want_s, strict=True):  # PQ codes tie; the 10th score's ties may differ
        sure = s > s[-1] + 1e-5
        assert set(g[sure]) == set(w[sure])
    assert (got_i - 1000 == want_p).mean() > 0.9
    # 20 vectors cannot train 32 centroids per sub-quantizer: 4-bit codes (16 centroids), 5 lists, and no rotation
    assert train_template(cfg, x[:20])[1] == {"nlist": 5, "pq_m": 8, "pq_nbits": 4, "opq": 0}


def test_pq_m_that_does_not_divide_the_embedding_is_refused_before_anything_runs(tiny_cfg, tmp_path):
    from ccr.errors import ConfigError
    from ccr.study.runner import Study

    with pytest.raises(ConfigError, match=r"'index.pq_m': 12 sub-quantizers do not divide the 16-dimensional"):
        Study(tiny_cfg("index.approx=ivfpq", "index.pq_m=12"), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="index.pq_nbits"):
        tiny_cfg("index.approx=ivfpq", "index.pq_nbits=20")
