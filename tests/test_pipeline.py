"""The input pipeline: decoding in DataLoader workers changes nothing but speed; the decoded-image cache."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from ccr.data import load_dataset
from ccr.data.dataset import FileImages
from ccr.data.pipeline import MemmapImages, cached_images, prefetched
from ccr.study.configure import load_config
from tests.conftest import TINY
from tests.karpathy_fixture import make_karpathy


@pytest.fixture
def kp(tmp_path):
    return make_karpathy(tmp_path / "kp", per_task=14, test_per_task=4)


def _cfg(kp, tmp_path, *extra):
    return load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=karpathy",
                              f"data.path={kp['path']}", f"data.images={kp['images']}",
                              f"data.tasks_file={kp['tasks_file']}", "model.image.image_size=16",
                              "train.threads=1", *extra])


def test_prefetched_batches_equal_direct_loads_in_order(kp, tmp_path):
    ds = load_dataset(_cfg(kp, tmp_path, "data.in_memory=false"))
    assert isinstance(ds.images, FileImages) and ds.images.decodes
    rng = np.random.default_rng(0)
    plan = [rng.choice(ds.n_images, size=int(rng.integers(1, 9)), replace=False) for _ in range(9)]
    want = [ds.images.load(ids) for ids in plan]
    for workers in (0, 2):
        got = list(prefetched(ds.images, plan, workers, prefetch_factor=1))
        assert len(got) == len(plan) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # 4 on 2 cores, on purpose
def test_same_seed_same_numbers_with_0_2_4_loader_workers_and_the_cache(kp, tmp_path):
    """Batch composition stays in the training process: the number of workers that decode images, or
    reading them from the decoded-image cache instead, does not change a single number."""
    from ccr.study.runner import Study

    runs = {}
    for name, extra in {"w0": ["data.num_workers=0"], "w2": ["data.num_workers=2"], "w4": ["data.num_workers=4"],
                        "cache": ["data.image_cache=true", "data.num_workers=2"]}.items():
        cfg = _cfg(kp, tmp_path, "data.in_memory=false", "strategy.name=replay", *extra)
        study = Study(cfg, tmp_path / name, progress=False, threads=1)
        runs[name] = study.run()
        kind = MemmapImages if name == "cache" else FileImages
        assert isinstance(study.ds.images, kind)
    base = runs["w0"]
    for name, res in runs.items():
        assert res["recall"] == base["recall"] and res["anatomy"] == base["anatomy"], name
        assert [t["mean_loss"] for t in res["train"]] == [t["mean_loss"] for t in base["train"]], name


def test_cache_is_built_once_and_keyed_by_the_files(kp, tmp_path, monkeypatch):
    import ccr.data.pipeline as pipeline

    files = load_dataset(_cfg(kp, tmp_path, "data.in_memory=false")).images
    builds = []
    real = pipeline._build
    monkeypatch.setattr(pipeline, "_build", lambda *a: (builds.append(a[1]), real(*a))[1])
    cache = tmp_path / "c"
    out = []
    threads = [threading.Thread(target=lambda: out.append(cached_images(files, cache, workers=0)))
               for _ in range(3)]  # three trials on one node at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(out) == 3
    ids = np.arange(len(files))
    assert torch.equal(out[0].load(ids), files.load(ids))  # the same pixels as decoding the files
    assert not [p for p in (cache / "images").iterdir() if p.name.endswith(".tmp")]
    cached_images(files, cache)  # a later study: opens the file, decodes nothing
    assert len(builds) == 1
    # another decoded size, or a changed image file, is another cache file
    assert cached_images(FileImages(files.paths, 8), cache).image_size == 8 and len(builds) == 2
    files.paths[0].write_bytes(files.paths[1].read_bytes())
    c = cached_images(files, cache)
    assert len(builds) == 3 and torch.equal(c.load(np.array([0])), c.load(np.array([1])))


def test_a_killed_cache_build_leaves_nothing_to_read(kp, tmp_path, monkeypatch):
    import ccr.data.dataset as dataset

    files = load_dataset(_cfg(kp, tmp_path, "data.in_memory=false")).images

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "decode_checked", dies)
    with pytest.raises(KeyboardInterrupt):
        cached_images(files, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c" / "images").iterdir() if not p.name.endswith(".lock")] == []


def test_ranks_get_equal_disjoint_slices_even_of_a_task_smaller_than_a_global_batch(tiny_cfg, tmp_path):
    """Under data parallelism every rank's slice has the same number of rows (the embeddings' all-gather
    needs it), also when a task has fewer training items than one global batch; one process is unchanged."""
    from ccr.strategies import Strategy
    from ccr.study.runner import Study
    from ccr.train import DistInfo, plan_batches

    study = Study(tiny_cfg("data.n_tasks=2", "train.epochs=1"), tmp_path / "o", progress=False)
    study.build()
    for n in (10, 48):  # fewer than 2 x batch 16, and more
        items = study.ds.image_ids(study.order[0], "train")[:n]
        plans = [plan_batches(study.context(0, DistInfo(r, 2)), Strategy(), items, np.random.default_rng(0),
                              max(1, n // (2 * min(16, n // 2))), DistInfo(r, 2)) for r in (0, 1)]
        for (a, _, na), (b, _, nb) in zip(*plans, strict=True):
            assert na == nb == len(a) == len(b) > 0 and not set(a) & set(b)
        single = plan_batches(study.context(0), Strategy(), items, np.random.default_rng(0), max(1, n // 16),
                              DistInfo())
        assert [len(p[0]) for p in single] == [min(16, n)] * len(single)


def test_damaged_caches_are_rebuilt_not_trusted(tmp_path):
    """A truncated decoded-image cache, a killed build's temporary file, a validated-dataset record of the
    wrong shape: each is noticed and rebuilt, never a traceback."""
    from ccr.data import load_dataset
    from ccr.study.configure import load_config
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
