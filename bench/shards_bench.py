"""Sharded galleries on Ray actors (CPU): search against one raw faiss IndexFlatIP, embedding with 1 and 2
actors, and the indexing cost of reindex vs no_reindex over a 5-task study.

    python bench/shards_bench.py --n 100000 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from common import best_of, unit

from ccr.study.configure import load_config
from ccr.study.runner import Study

TINY_MODEL = ["data.n_tasks=5"]


def search_rates(args, tmp: Path) -> None:
    """Exact top-10 search over n x d unit vectors: raw faiss, then ccr's pool with 1 and 2 shards."""
    import faiss

    from ccr.distributed.sharded import ShardedGallery
    from ccr.distributed.shards import ShardPool

    rng = np.random.default_rng(0)
    q = unit(rng, args.nq, args.d)
    for n in args.n:
        g = unit(rng, n, args.d)
        raw = faiss.IndexFlatIP(args.d)
        raw.add(g)
        t_raw = best_of(lambda raw=raw: raw.search(q, 10))
        line = f"search n={n:,} d={args.d} nq={args.nq}: raw faiss {args.nq / t_raw:,.0f} q/s"
        for shards in (1, 2):
            cfg = load_config(None, [*TINY_MODEL, f"resources.shards={shards}", "resources.shard_cpus=0.5"])
            pool = ShardPool(cfg, tmp / "base" / "tokenizer")
            sg = ShardedGallery("b/images", "images", pool)
            sg.load_state_dict({"all": {"ids": np.arange(n), "emb": g, "version": np.zeros(n, np.int64)}})
            sg.search(q[:10], 10, ["all"])
            t = best_of(lambda sg=sg: sg.search(q, 10, ["all"]))
            line += f" | ccr {shards} shard(s) {args.nq / t:,.0f} q/s (ratio {t_raw / t:.2f})"
            pool.shutdown()
        print(line, flush=True)


def embed_rates(base: Study, tmp: Path) -> None:
    """Embedding throughput with 1 and 2 actors (the default model, every image of the benchmark)."""
    from ccr.distributed.sharded import ShardedGallery
    from ccr.distributed.shards import ShardPool

    ids = np.arange(base.ds.n_images)
    base.build()
    state = base.model.state_dict()
    rates = {}
    for shards in (1, 2):
        cfg = load_config(None, [*TINY_MODEL, f"resources.shards={shards}", "resources.shard_cpus=1"])
        pool = ShardPool(cfg, tmp / "base" / "tokenizer")
        pool.set_model(0, state)
        sg = ShardedGallery("e/images", "images", pool)
        sg.embed("warm", ids[:256], 0)
        t = time.perf_counter()
        sg.embed("all", ids, 0)
        rates[shards] = len(ids) / (time.perf_counter() - t)
        pool.shutdown()
    print(f"embed images with actors: 1 actor {rates[1]:,.0f}/s | 2 actors {rates[2]:,.0f}/s | "
          f"efficiency {rates[2] / (2 * rates[1]):.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--skip-cost", action="store_true")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp())
    base = Study(load_config(None, TINY_MODEL), tmp / "base", progress=False)
    base.prepare_out()
    search_rates(args, tmp)
    embed_rates(base, tmp)
    ray.shutdown()
    if args.skip_cost:
        return
    # indexing cost of reindex vs no_reindex over a 5-task study (each policy alone, so seconds are its own)
    for policy in ("reindex", "no_reindex"):
        cfg = load_config(None, ["train.epochs=2", f"index.policy={policy}", "eval.anatomy=false"])
        res = Study(cfg, tmp / policy, progress=False).run()
        c = res["index_cost"]
        print(f"index cost over 5 tasks [{policy}]: {c['images_embedded']} images + {c['captions_embedded']} "
              f"captions embedded, {c['seconds']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
