"""How a study executes, decided in one place: locally or through Ray Train (`train.workers > 1` or
`train.use_ray`), with galleries in this process or sharded over Ray actors (`index.shards > 1`).

The CLI and sweep trials call `make_study` then `run_study`; the Ray-free core (`ccr.study`) receives
what the choice needs (an evaluator class, a device, a callback) and never imports this package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccr.config import Config
from ccr.evaluation import Evaluator
from ccr.storage import Storage
from ccr.study import Study


def evaluator_for(cfg: Config) -> type[Evaluator]:
    """Galleries in this process, or one shard of each on every Ray actor of a pool."""
    if cfg.index.shards > 1:
        from ccr.distributed.shards import ShardedEvaluator

        return ShardedEvaluator
    return Evaluator


def uses_ray_train(cfg: Config) -> bool:
    return cfg.train.workers > 1 or cfg.train.use_ray


def make_study(cfg: Config, out: str | Path | Storage, progress: bool = True, threads: int | None = None,
               on_batch: Callable[[int, int, int], None] | None = None) -> Study:
    """A checked study (every input error raised here, before Ray starts) wired for its execution."""
    if (uses_ray_train(cfg) or cfg.index.shards > 1) and os.environ.get("RAY_ADDRESS"):
        import ray

        from ccr.distributed import check_reachable

        if not ray.is_initialized():  # a sweep trial runs inside a Ray that answered already
            check_reachable(os.environ["RAY_ADDRESS"])
    if uses_ray_train(cfg):
        from ccr.distributed.train import check_distributed

        check_distributed(cfg)
    return Study(cfg, out, progress, threads, evaluator=evaluator_for(cfg), on_batch=on_batch)


def run_study(study: Study) -> dict[str, Any]:
    """Run (or resume) `study` to the end; returns the results also written to its results.json."""
    if uses_ray_train(study.cfg):
        from ccr.distributed.train import run_distributed

        return run_distributed(study)
    return study.run()


__all__ = ["evaluator_for", "make_study", "run_study", "uses_ray_train"]
