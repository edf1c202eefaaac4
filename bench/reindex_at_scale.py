"""A re-index at the scale it is priced at: N distractors in WebDataset shards, embedded by a Ray Data pool of
1 or 2 actors (ranged reads, decoding with the model's preprocessing, tokenizing, embedding), their vectors sent
to 1 or 2 gallery shard actors that build their flat indexes; next to it, what `ccr calibrate` predicts.

    python bench/reindex_at_scale.py --items 100000
    python bench/reindex_at_scale.py --items 1000000
    python bench/reindex_at_scale.py --items 0 --index-vectors 10000000   # the index part alone, random vectors
    python bench/reindex_at_scale.py --items 100000 --make-only          # the shards of sweeps/distractors.yaml

It prints, per (embedding actors, gallery shards): the re-index's wall time (images + captions + index), items/s,
the peak resident memory of each embedding actor and each shard actor (an embedding actor holds its batches
only; a shard its own vectors), the driver's, the index build time, and the calibration's prediction
(N / images per second + N / captions per second + the index's add rate, from `ccr calibrate` on this machine
with the same threads, on the same shards' first 50,000 samples). Goal: within 15 % at 10^6.
With --index-vectors: ccr's flat and IVF-PQ indexes (ccr.index.search) against raw faiss on the same random
unit vectors, and the calibration's index prediction (its rates measured on 200,000 vectors).

The shards hold 32 px PNG images (the embedded default's size) of random pixels and 8-word captions of its
vocabulary, made once under --workdir and reused. Torch threads: --threads in all (one actor: all of
them; two actors: half each), as the calibration.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tarfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

PER_SHARD = 10_000


def _write_shard(args: tuple[Path, int, int, int, int]) -> None:
    from PIL import Image

    path, first, n, size, seed = args
    rng = np.random.default_rng(seed)
    words = ["a", "red", "blue", "green", "small", "large", "circle", "square", "triangle", "on", "the", "left",
             "right", "above", "below", "striped", "dotted", "shape", "bright", "dark"]
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for i in range(first, first + n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
            for name, data in ((f"{i:09d}.png", buf.getvalue()),
                               (f"{i:09d}.txt", " ".join(rng.choice(words, 8)).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def make_shards(root: Path, n: int, size: int, procs: int) -> Path:
    """n samples in shards of PER_SHARD under root (kept: made once)."""
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(root / f"{s:05d}.tar", lo, min(PER_SHARD, n - lo), size, lo)
            for s, lo in enumerate(range(0, n, PER_SHARD)) if not (root / f"{s:05d}.tar").exists()]
    if jobs:
        t0 = time.perf_counter()
        with Pool(procs) as pool:
            pool.map(_write_shard, jobs)
        print(f"made {len(jobs)} shard(s) ({sum(j[2] for j in jobs)} samples) in {time.perf_counter() - t0:.1f} s "
              f"under {root}", flush=True)
    return root


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reindex(cfg, study, actors: int, shards: int, threads: int) -> dict:
    """One re-index of every distractor: embedded by the pool, put on the shards, indexed there."""
    import dataclasses

    import ray

    from ccr.data.webdataset import DISTRACTORS, SPLIT
    from ccr.distributed.embed_pool import StreamedEmbedding
    from ccr.distributed.sharded import shard_of
    from ccr.distributed.shards import ShardPool
    from ccr.study.outputs import TOKENIZER

    per = max(1, threads // actors)
    c = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, embed_actors=actors, embed_cpus=float(per)),
                            train=dataclasses.replace(cfg.train, threads=per),
                            resources=dataclasses.replace(cfg.resources, shards=shards, shard_cpus=0.5))
    engine = StreamedEmbedding(c, study.store.child(TOKENIZER))
    engine.hold(study.ds, study.tokens)
    pool = ShardPool(c, study.store.child(TOKENIZER))
    try:
        ids = {"images": study.ds.image_ids(DISTRACTORS, SPLIT), "captions": study.ds.caption_ids(DISTRACTORS, SPLIT)}
        seconds, peaks = {}, {}
        t_all = time.perf_counter()
        for m, v in ids.items():
            t0 = time.perf_counter()
            engine.peak_rss_mb = {}
            vectors = engine.embed(m, v, study.model)
            seconds[m] = time.perf_counter() - t0
            peaks[m] = sorted(round(r) for r in engine.peak_rss_mb.values())  # each actor of this pass
            owner = shard_of(v, shards)
            pool.call({i: ("put", f"bench/{m}", DISTRACTORS, v[owner == i], ray.put(vectors[owner == i]), 0)
                       for i in range(shards)})
            del vectors
        t0 = time.perf_counter()
        q = np.ones((1, cfg.model.embed_dim), np.float32) / np.sqrt(cfg.model.embed_dim)
        for m in ids:  # the first search builds each shard's index of its own vectors
            pool.call_all("search", f"bench/{m}", q, 10, [DISTRACTORS], False, journal=False)
        seconds["index"] = time.perf_counter() - t0
        build = {m: max(pool.call_all("build_seconds", f"bench/{m}", journal=False)) for m in ids}
        wall = time.perf_counter() - t_all
        shard_rss = pool.call_all("rss_mb", journal=False)
    finally:
        pool.shutdown()
    n = len(ids["images"])
    return {"actors": actors, "shards": shards, "items": n, "wall_s": round(wall, 2),
            "images_s": round(seconds["images"], 2), "captions_s": round(seconds["captions"], 2),
            "index_s": round(seconds["index"], 2), "index_build_s": {m: round(v, 3) for m, v in build.items()},
            "items_per_s": round(2 * n / wall, 1),
            "embed_actor_peak_rss_mb": peaks,
            "shard_actor_peak_rss_mb": [round(v) for v in shard_rss], "driver_peak_rss_mb": round(rss_mb())}


def index_part(n: int, dim: int, threads: int, rec: dict) -> list[dict]:
    """ccr's flat and IVF-PQ indexes against raw faiss at n random unit vectors, and the calibration's prediction."""
    import faiss

    from ccr.config.schema import IndexConfig
    from ccr.index.search import ApproxIndex, FlatIndex, train_template

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 1_000_000):
        part = rng.standard_normal((min(1_000_000, n - lo), dim), dtype=np.float32)
        x[lo:lo + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    q = x[:1000]
    rows = []
    t0 = time.perf_counter()
    flat = FlatIndex(x, ids)
    t_ccr = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    raw.add_with_ids(x, ids)
    t_raw = time.perf_counter() - t0
    s_ccr, i_ccr = flat.search(q[:100], 10)
    _, i_raw = raw.search(q[:100], 10)
    assert np.array_equal(i_ccr, i_raw)
    rows.append({"index": "flat", "vectors": n, "ccr_build_s": round(t_ccr, 2), "raw_faiss_build_s": round(t_raw, 2),
                 "predicted_s": round(rec["flat_add_per_million"] * n / 1e6, 2)})
    del flat, raw
    icfg = IndexConfig(approx="ivfpq", nlist=1024, pq_m=8)
    t0 = time.perf_counter()
    template, sizes = train_template(icfg, x[:20000])
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ApproxIndex(x, ids, template, icfg.nprobe)
    t_ccr = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = faiss.index_factory(dim, f"IVF{sizes.get('nlist', 1024)},PQ8", faiss.METRIC_INNER_PRODUCT)
    raw.train(x[:20000])
    raw_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw.add(x)
    t_raw = time.perf_counter() - t0
    rows.append({"index": f"ivfpq nlist={sizes.get('nlist')} pq_m=8", "vectors": n, "ccr_train_s": round(train, 2),
                 "ccr_build_s": round(t_ccr, 2), "raw_faiss_train_s": round(raw_train, 2),
                 "raw_faiss_build_s": round(t_raw, 2),
                 "predicted_s": round(rec["ivfpq_train_s"] + rec["ivfpq_add_per_million"] * n / 1e6, 2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="distractors to re-index (0: only --index-vectors)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--index-vectors", type=int, default=0, help="also the index part at this many random vectors")
    p.add_argument("--workdir", default="/tmp/ccr-bench-reindex")
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--rounds", type=int, default=3, help="calibration rounds (ccr calibrate --rounds; default 3)")
    p.add_argument("--make-only", action="store_true", help="only make the shards (sweeps/distractors.yaml reads them)")
    a = p.parse_args()

    import ray
    import torch

    from ccr.study.calibrate import calibrate, index_rates
    from ccr.study.configure import load_config
    from ccr.study.runner import Study

    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    out: dict = {"threads": a.threads, "cpus": os.cpu_count(), "runs": []}
    base = ["eval.anatomy=false", f"train.threads={a.threads}"]
    if a.items:
        shards = make_shards(work / f"shards-{a.items}", a.items, 32, a.threads)
        if a.make_only:
            return
        calib = calibrate(load_config(None, [*base, f"eval.distractors={shards}",
                                             f"eval.distractors_limit={min(a.items, 50_000)}"]), 10.0, 200_000,
                          a.rounds)
        out["calibration"] = {k: calib[k] for k in ("images_per_second", "captions_per_second", "items")}
        out["calibration"]["rounds"] = {m: calib["embedding"][m]["rounds"] for m in ("images", "captions")}
        out["calibration"]["flat_add_per_million"] = calib["index"]["add_seconds_per_million"]
        print("calibration:", json.dumps(out["calibration"]), flush=True)
        cfg = load_config(None, [*base, f"eval.distractors={shards}"])
        t0 = time.perf_counter()
        study = Study(cfg, work / f"study-{a.items}", progress=False)
        study.prepare_out()
        study.build()
        print(f"study set up (scan of {a.items} samples, tokenizer, model) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        ray.init(num_cpus=a.threads + 2, include_dashboard=False, log_to_driver=False)
        predicted = (a.items / calib["images_per_second"] + a.items / calib["captions_per_second"]
                     + 2 * a.items * calib["index"]["add_seconds_per_million"] / 1e6)
        for actors in a.actors:
            for k in a.shards:
                row = reindex(cfg, study, actors, k, a.threads)
                row["predicted_s"] = round(predicted, 2)
                row["measured_over_predicted"] = round(row["wall_s"] / predicted, 3)
                out["runs"].append(row)
                print(json.dumps(row), flush=True)
        ray.shutdown()
    if a.index_vectors:
        from ccr.config.schema import IndexConfig

        rec = {"flat_add_per_million": index_rates(IndexConfig(), 64, 200_000)["add_seconds_per_million"]}
        ivf = index_rates(IndexConfig(approx="ivfpq", nlist=1024, pq_m=8), 64, 200_000)
        rec.update(ivfpq_train_s=ivf["train_seconds"], ivfpq_add_per_million=ivf["add_seconds_per_million"])
        for row in index_part(a.index_vectors, 64, a.threads, rec):
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
