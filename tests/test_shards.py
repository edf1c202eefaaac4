"""Sharded galleries on Ray actors (local Ray, 2 CPUs)."""

import json
import time

import numpy as np
import pytest

from ccr.config.schema import IndexConfig

ray = pytest.importorskip("ray")

from ccr.distributed.runner import make_study  # noqa: E402
from ccr.index.gallery import IndexState  # noqa: E402
from ccr.index.search import FlatIndex  # noqa: E402
from ccr.index.snapshots import SnapshotError, read_manifest  # noqa: E402
from ccr.study.configure import load_config  # noqa: E402
from ccr.study.runner import Study  # noqa: E402
from tests.conftest import TINY, counts  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def pools():
    """Collects the pools a test makes and stops their actors afterwards (2 CPUs hold few actors)."""
    made = []
    yield made
    for p in made:
        if p.actors:
            p.shutdown()


def make_pool(pools, over, n, root):
    from ccr.distributed.shards import ShardPool

    p = ShardPool(load_config(None, [*over, f"resources.shards={n}"]), root / "base" / "tokenizer")
    pools.append(p)
    return p


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_local):
    """A tokenizer and cached data that shard actors can load."""
    root = tmp_path_factory.mktemp("shards")
    over = [*TINY, f"data.cache_dir={root / 'cache'}", "data.n_tasks=2", "resources.shard_cpus=0.25"]
    s = Study(load_config(None, over), root / "base", progress=False)
    s.out.mkdir(parents=True, exist_ok=True)
    s.build()
    return root, over


def random_state(n=300, d=16, ties=True):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    if ties:
        emb[100:130] = emb[5]
    ids = np.arange(1000, 1000 + n)
    return {"a": {"ids": ids[:150], "emb": emb[:150], "version": np.zeros(150, np.int64)},
            "b": {"ids": ids[150:], "emb": emb[150:], "version": np.ones(150, np.int64)}}, emb, ids


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_sharded_search_equals_one_flat_index(base, pools, n_shards):
    from ccr.distributed.sharded import ShardedGallery

    root, over = base
    pool = make_pool(pools, over, n_shards, root)
    g = ShardedGallery("t/images", "images", pool)
    state, emb, ids = random_state()
    g.load_state_dict(state)
    q = np.concatenate([emb[5:6], np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32)])
    ref_s, ref_i = FlatIndex(emb, ids).search(q, 12)
    s, i = g.search(q, 12, ["a", "b"])
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-6)  # same ranking; a score may differ in its last bit
    assert i[0].tolist()[:12] == [1005] + list(range(1100, 1111))  # ties by smaller id
    # one task only
    ref_s, ref_i = FlatIndex(emb[:150], ids[:150]).search(q, 5)
    np.testing.assert_array_equal(g.search(q, 5, ["a"])[1], ref_i)
    ids_a, emb_a, _ = g.entries("a")
    np.testing.assert_array_equal(ids_a, ids[:150])
    np.testing.assert_array_equal(emb_a, emb[:150])


def test_full_run_two_shards_equals_one_with_distractors_each_shard_holding_only_its_own(base, tmp_path):
    """With distractors in every gallery, embedded by a Ray Data pool of 2 actors (index.embed_actors) whose
    vectors go to the shards that own them: 2 shards give the numbers of 1 gallery embedding everything in its
    own process exactly (flat search), and each shard actor holds only the items whose ids hash to it."""
    from ccr.distributed.sharded import shard_of
    from tests.webdataset_fixture import make_shards

    root, over = base
    shards = make_shards(tmp_path / "distractors", 90, per_shard=40)
    extra = ["index.compare=[no_reindex,backfill]", "data.n_tasks=2", f"eval.distractors={shards}"]
    one = Study(load_config(None, [*over, *extra]), tmp_path / "one", progress=False).run()
    pool = [*extra, "resources.shards=2", "index.embed_actors=2", "index.embed_cpus=0.5"]
    study = make_study(load_config(None, [*over, *pool]), tmp_path / "two", progress=False)
    study.prepare_out()
    study.build()
    ids = study.evaluator.gallery_ids()
    held = study.evaluator.galleries.pool.call_all("hold_sizes", journal=False)
    for m, v in ids.items():
        assert [h[m] for h in held] == [int((shard_of(v, 2) == i).sum()) for i in range(2)], m
    assert len(ids["images"]) == 2 * 12 + 90 and sum(h["images"] for h in held) == len(ids["images"])
    try:  # the rest of Study.run on the same pool (one pool start, not two)
        for step in range(len(study.order)):
            study.run_task(step)
        two = study.write_results(len(study.order), complete=True)
    finally:
        study.evaluator.close()
    assert two["dataset"]["distractors"]["samples"] == 90
    peaks = study.evaluator.galleries.streamed.peak_rss_mb  # one entry per embedding actor that worked
    assert len(peaks) >= 1 and all(v > 0 for v in peaks.values())
    for p in ("reindex", "no_reindex", "backfill"):
        assert two["by_policy"][p]["recall"] == one["by_policy"][p]["recall"], p
        assert counts(two["by_policy"][p]["index_cost"]) == counts(one["by_policy"][p]["index_cost"]), p


def test_killed_actor_is_rebuilt_with_the_same_answers(base, pools):
    from ccr.distributed.sharded import ShardedGallery

    root, over = base
    pool = make_pool(pools, over, 2, root)
    g = ShardedGallery("t/captions", "captions", pool)
    state, emb, ids = random_state(ties=False)
    g.load_state_dict(state)
    g.apply_map("a", np.eye(16, dtype=np.float32) * 2)  # an op after the load, replayed on recovery
    q = np.random.default_rng(2).normal(size=(15, 16)).astype(np.float32)
    before = g.search(q, 10, ["a", "b"])
    old_pid = pool.call_all("pid", journal=False)[1]
    ray.kill(pool.actors[1], no_restart=False)
    for _ in range(50):  # the kill is asynchronous: search until the loss is seen and repaired
        after = g.search(q, 10, ["a", "b"])
        if pool.recoveries:
            break
        time.sleep(0.1)
    assert pool.recoveries >= 1 and pool.call_all("pid", journal=False)[1] != old_pid
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


def test_pool_keeps_one_model_and_a_short_journal(base, tmp_path):
    """After every step the pool holds only the current model (not one per step for ever) and each shard's
    journal is its state plus that model; a shard lost afterwards is rebuilt with the same answers, and its items."""
    root, over = base
    s = make_study(load_config(None, [*over, "resources.shards=2", "index.compare=[no_reindex]"]), tmp_path,
                   progress=False)
    s.prepare_out()
    s.build()
    try:
        pool = s.evaluator.galleries.pool
        for step in range(2):
            s.run_task(step)
            assert list(pool.model_refs) == [step]
            assert all([op[0] for op in j] == ["load_state", "set_model"] for j in pool.journal)
        g = s.evaluator.states["no_reindex"].galleries["images"]
        q = np.random.default_rng(3).normal(size=(10, s.cfg.model.embed_dim)).astype(np.float32)
        before = g.search(q, 5, s.order)
        ray.kill(pool.actors[0], no_restart=False)
        for _ in range(50):
            after = g.search(q, 5, s.order)
            if pool.recoveries:
                break
            time.sleep(0.1)
        assert pool.recoveries >= 1
        np.testing.assert_array_equal(after[1], before[1])
        # the restarted actor was handed its items again: it re-embeds its entries as this process does
        task, ids = s.order[0], g.ids(s.order[0])
        g.embed(task, ids, 1)
        want = s.embedder(s.model).embed("images", ids)
        np.testing.assert_allclose(g.entries(task)[1], want, rtol=1e-5, atol=1e-6)
    finally:
        s.evaluator.close()


def test_snapshots_round_trip_and_reject_bad_ones(base, pools, tmp_path):
    from ccr.distributed.sharded import ShardedGallery

    root, over = base
    pool = make_pool(pools, over, 2, root)
    g = ShardedGallery("t/images", "images", pool)
    state, emb, ids = random_state()
    g.load_state_dict(state)
    q = emb[:7] + 0.01
    before = g.search(q, 10, ["a", "b"])
    pool.save_snapshot(tmp_path / "snap", step=1)
    fresh = make_pool(pools, over, 2, root)
    fresh.load_snapshot(tmp_path / "snap")
    g2 = ShardedGallery("t/images", "images", fresh)
    after = g2.search(q, 10, ["a", "b"])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    pool.shutdown()
    f = tmp_path / "snap" / "shard_001.npz"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match="checksum"):
        fresh.load_snapshot(tmp_path / "snap")
    fresh.shutdown()
    # a pool of 3 shards reads the manifest first (ShardPool.load_snapshot) and is refused by it, before any
    # actor is asked: checked here without starting 3 actors for it
    with pytest.raises(SnapshotError, match="2 shards; this index has 3"):
        read_manifest(tmp_path / "snap", 3, 16)


def test_local_snapshot_round_trip_and_corruption(tmp_path):
    state, emb, ids = random_state()
    st = IndexState.empty(IndexConfig())
    st.galleries["images"].load_state_dict(state)
    st.galleries["captions"].load_state_dict(state)
    st.save_snapshot(tmp_path / "s", step=0)
    st2 = IndexState.empty(IndexConfig())
    st2.load_snapshot(tmp_path / "s", dim=16)
    q = emb[:5]
    for m in ("images", "captions"):
        a = st.galleries[m].search(q, 10, ["a", "b"])
        b = st2.galleries[m].search(q, 10, ["a", "b"])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(SnapshotError, match="16-d"):
        IndexState.empty(IndexConfig()).load_snapshot(tmp_path / "s", dim=32)
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    man["sha256"][0] = "0" * 64
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SnapshotError, match="checksum"):
        IndexState.empty(IndexConfig()).load_snapshot(tmp_path / "s")
    with pytest.raises(SnapshotError, match="no manifest"):
        IndexState.empty(IndexConfig()).load_snapshot(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_index_reports_recall_against_exact(kind, tiny_cfg, tmp_path):
    res = Study(tiny_cfg(f"index.approx={kind}", "index.nlist=4", "data.n_tasks=2", "eval.scope=seen",
                         "index.save_snapshots=true"), tmp_path, progress=False).run()
    q = res["index_quality"]
    assert q["kind"] == kind
    for m in ("images", "captions"):
        assert 0.0 < q["recall_at_10_vs_exact"][m] <= 1.0
        first = q["trainings"][m][0]
        assert first["nlist"] == min(4, first["vectors"] // 4) if kind != "hnsw" else first["hnsw_m"] == 16
    if kind == "ivfpq":  # a test split's gallery trains codes of fewer bits than 8; the record says how many
        assert 1 <= q["trainings"]["images"][0]["pq_nbits"] < 8 and q["trainings"]["images"][0]["pq_m"] == 8
    cost = res["index_cost"]  # index building, per step: training the template and adding the vectors
    assert all(s["index_seconds"] > 0 for s in cost["per_step"])
    assert cost["index_seconds"] == pytest.approx(sum(s["index_seconds"] for s in cost["per_step"]), abs=1e-3)
    assert res["metrics"]["index_cost/index_seconds"] == cost["index_seconds"]
    assert (tmp_path / "snapshots" / "reindex" / f"02_{res['task_order'][1]}" / "manifest.json").is_file()


def test_approx_on_shards(base, tmp_path):
    """IVF-PQ, trained on the driver and sent to both shards: its recall against exact search
    and each step's index building (every shard's) are reported."""
    root, over = base
    res = make_study(load_config(None, [*over, "index.approx=ivfpq", "index.nlist=4",
                                        "resources.shards=2"]), tmp_path, progress=False).run()
    assert 0 < res["index_quality"]["recall_at_10_vs_exact"]["images"] <= 1
    assert res["index_quality"]["trainings"]["images"][0]["pq_m"] == 8
    assert all(s["index_seconds"] > 0 for s in res["index_cost"]["per_step"])


def test_complete_clip_on_shards_with_loader_workers_equals_one_process(base, tmp_path):
    """A complete CLIP's own preprocessing reaches every process that makes pixels: shard actors embedding
    their galleries and DataLoader workers decoding JPEGs give the numbers of one process decoding itself.
    With LoRA adapters: the shard actors build the adapted model and load each step's weights into it."""
    from tests.karpathy_fixture import make_karpathy
    from tests.pretrained_fixture import make_complete

    files = make_karpathy(tmp_path / "data", per_task=16, test_per_task=6)
    clip = make_complete(tmp_path / "clip", "clip", resample=2)
    over = ["data.kind=karpathy", f"data.path={files['path']}", f"data.images={files['images']}",
            f"data.tasks_file={files['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", "data.in_memory=false",
            f"model.pretrained={clip}", "train.epochs=1", "train.batch_size=8", "train.threads=1",
            "index.compare=[no_reindex]", "model.adapter.kind=lora", "model.adapter.r=4"]
    one = Study(load_config(None, over), tmp_path / "one", progress=False).run()
    two = make_study(load_config(None, [*over, "resources.shards=2", "data.num_workers=2"]), tmp_path / "two",
                     progress=False).run()
    assert two["zero_shot"] == one["zero_shot"]
    for p in ("reindex", "no_reindex"):
        assert two["by_policy"][p]["recall"] == one["by_policy"][p]["recall"], p
