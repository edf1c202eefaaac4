"""How a study executes, decided in one place: locally or through Ray Train (`resources.workers > 1` or
`resources.use_ray`), with galleries in this process or sharded over Ray actors (`resources.shards > 1`).

The CLI and sweep trials call `make_study` then `run_study`; the Ray-free core (`ccr.study.runner`) receives
what the choice needs (where its galleries live, a device, a callback) and never imports this package.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccr.config.schema import Config
from ccr.index.backend import Galleries
from ccr.io.storage import Storage, open_storage
from ccr.study.outputs import TOKENIZER
from ccr.study.runner import Study


def galleries_for(cfg: Config, store: Storage) -> Callable[[], Galleries]:
    """How the study of `cfg` in `store` makes its galleries: in this process, or one shard of each on every Ray
    actor of a pool (resources.shards > 1), whose actors read the study's tokenizer from storage."""
    make: Callable[[], Galleries] = Galleries
    if cfg.resources.shards > 1:
        from ccr.distributed.sharded import ShardedGalleries

        make = functools.partial(ShardedGalleries.start, cfg, store.child(TOKENIZER))
    if cfg.index.embed_actors:
        return functools.partial(_streamed, make, cfg, store.child(TOKENIZER))
    return make


def _streamed(make: Callable[[], Galleries], cfg: Config, tokenizer: Storage) -> Galleries:
    """`make`'s galleries, whose distractors a Ray Data pool of index.embed_actors embeds (ccr.distributed.embed_pool)
    instead."""
    from ccr.distributed.embed_pool import StreamedEmbedding

    galleries = make()
    galleries.streamed = StreamedEmbedding(cfg, tokenizer)
    return galleries


def uses_ray_train(cfg: Config) -> bool:
    return cfg.resources.workers > 1 or cfg.resources.use_ray


def make_study(cfg: Config, out: str | Path | Storage, progress: bool = True, threads: int | None = None,
               on_batch: Callable[[int, int, int], None] | None = None) -> Study:
    """A checked study (every input error raised here, before Ray starts) wired for its execution."""
    if (uses_ray_train(cfg) or cfg.resources.shards > 1) and os.environ.get("RAY_ADDRESS"):
        import ray

        from ccr.distributed.cluster import check_reachable

        if not ray.is_initialized():  # a sweep trial runs inside a Ray that answered already
            check_reachable(os.environ["RAY_ADDRESS"])
    if uses_ray_train(cfg):
        from ccr.distributed.train import check_distributed

        check_distributed(cfg)
    store = open_storage(out)
    return Study(cfg, store, progress, threads, galleries=galleries_for(cfg, store), on_batch=on_batch)


def run_study(study: Study) -> dict[str, Any]:
    """Run (or resume) `study` to the end; returns the results also written to its results.json."""
    if uses_ray_train(study.cfg):
        from ccr.distributed.train import run_distributed

        return run_distributed(study)
    return study.run()


__all__ = ["galleries_for", "make_study", "run_study", "uses_ray_train"]
