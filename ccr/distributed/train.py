"""Data-parallel continual training of one task sequence through Ray Train (TorchTrainer, DDP).

One trainer runs the whole sequence: every worker walks the tasks in order, training on its slice
of each global batch with negatives gathered from all workers. After each task rank 0 indexes and
queries with the Ray-free core, writes ccr's checkpoint (model + strategy state + galleries) and
reports its metrics to Ray Train. A worker that dies makes Ray Train restart the group, which
resumes from the last finished task's checkpoint in the study's storage (a shared folder or an object
store, so the restart may land on other nodes); a restarted `ccr run` with the same --out does the same.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.distributed as tdist

from ccr.config.schema import Config, ConfigError, to_dict
from ccr.distributed.cluster import check_can_ever_run, init_ray
from ccr.index.backend import Galleries
from ccr.study.configure import build_config
from ccr.study.runner import Study
from ccr.train import DistInfo

log = logging.getLogger(__name__)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradients of every rank (all_reduce), then keeps
    this rank's rows: the same gradient as one process computing the loss on the whole batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = tdist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) per rank -> (W*B, D) in rank order, differentiable (equal B on every rank)."""
    return _GatherWithGrad.apply(x)


def check_distributed(cfg: Config) -> None:
    """Refuse, before anything starts, a strategy that is not correct under data parallelism."""
    from ccr.strategies import build_strategy

    strategy = build_strategy(cfg.strategy)
    if not strategy.supports_distributed:
        raise ConfigError(f"strategy {cfg.strategy.name!r} does not support data-parallel training "
                          f"(resources.workers={cfg.resources.workers}); use resources.workers=1")


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over all ranks (a new tensor, the same on every rank); no gradient flows through it."""
    out = t.detach().clone()
    tdist.all_reduce(out)
    return out / tdist.get_world_size()


def _quiet_worker_logs() -> None:
    """No INFO line per `ray.train.report` on every rank; Ray Train's warnings and errors still show."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:  # Ray 2.60 names the reporting logger by its file path, outside the "ray.train" hierarchy
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _unused_galleries() -> Galleries:
    """The galleries of a rank > 0, which never indexes or queries: in its own process, and left empty."""
    return Galleries()


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The per-worker loop: the whole task sequence, resuming from the last finished task in storage.

    ccr's own checkpoints (in the study's storage, reachable from every node) are the only ones: a
    restarted worker group, on whatever nodes, resumes from the last task checkpointed there.
    """
    import ray.train
    from torch.nn.parallel import DistributedDataParallel as DDP

    _quiet_worker_logs()
    cfg = build_config(config["cfg"])
    ctx_train = ray.train.get_context()
    rank, world = ctx_train.get_world_rank(), ctx_train.get_world_size()
    device = torch.device("cuda", ctx_train.get_local_rank()) if config["use_gpu"] else torch.device("cpu")
    # only rank 0 indexes and queries (Study.run_task): the others' galleries stay empty in their own process. Each
    # rank making the configured ones started a shard pool per rank, whose actors could wait for ever for CPUs
    # the workers hold (resources.workers=2, resources.shards=2 on 2 CPUs)
    galleries = config["galleries"] if rank == 0 else _unused_galleries
    study = Study(cfg, config["out"], progress=config.get("progress", False) and rank == 0,
                  threads=config.get("threads"), galleries=galleries, device=device,
                  on_batch=config.get("on_batch"))
    study.build()
    done = study.resume()
    dist = DistInfo(rank, world, gather_with_grad if world > 1 else None, all_reduce_mean if world > 1 else None)
    device_ids = [study.device.index] if study.device.type == "cuda" else None
    wrap = (lambda m: DDP(m, device_ids=device_ids)) if world > 1 else None
    with study.logging_to_store() if rank == 0 else contextlib.nullcontext():
        for step in range(done + 1, len(study.order)):
            stats = study.run_task(step, dist, wrap)
            ray.train.report({"step": step, "task": study.order[step], "mean_loss": stats["mean_loss"],
                              "pairs_per_s": stats["pairs_per_s"]})
        if rank == 0:
            study.write_results(len(study.order), complete=True)
            study.evaluator.close()


def _quiet_train_logs() -> dict[str, Any]:
    """Ray Train's INFO lines (resources requested, every report) say nothing a ccr user needs;
    its warnings and errors still show. Rays without train.LoggingConfig print them."""
    import ray.train

    cls = getattr(ray.train, "LoggingConfig", None)
    return {"logging_config": cls(log_level="WARNING")} if cls else {}


def _trainer_class():
    """TorchTrainer; on a Ray that ccr started for itself, without Ray Train's detached placement-group
    cleaner. The cleaner removes a crashed controller's placement group on a long-lived cluster; on ccr's own
    Ray, which ends with the command, it has nothing to do and polls the state API, which a Ray without a
    dashboard does not serve: 54 warnings ("Failed to query Ray Train Controller actor state") in one
    2-worker run. Should Ray rename its private hook, the plain TorchTrainer is used."""
    from ray.train.torch import TorchTrainer

    from ccr.distributed.cluster import OWN_RAY

    if not OWN_RAY["local"] or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class OwnRayTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return OwnRayTorchTrainer


def run_distributed(study: Study) -> dict[str, Any]:
    """Run (or resume) `study` with `resources.workers` Ray Train workers; returns its results.

    `study` (already checked: every input error before Ray starts) gives the config, the storage (a
    folder or URI; Ray Train's own run state goes to `ray/` in it), how its galleries are made, the torch
    threads and the per-batch callback, which every worker receives.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    cfg, store = study.cfg, study.store
    check_distributed(cfg)
    study.prepare_out()  # config.yaml and the tokenizer, shared by all workers
    study.prepare_pretrained()  # tasks.pretrain: trained once here and cached, not once per worker
    use_gpu = cfg.resources.use_gpu if cfg.resources.use_gpu is not None else torch.cuda.is_available()
    init_ray()
    per_worker = {"CPU": cfg.resources.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    need = {k: v * cfg.resources.workers for k, v in per_worker.items()}
    what, key = f"{cfg.resources.workers} training workers", "resources.workers x resources.cpus_per_worker"
    if cfg.resources.shards > 1:  # rank 0 starts the gallery shards while the workers hold their resources
        need["CPU"] += cfg.resources.shards * cfg.resources.shard_cpus
        need["GPU"] = need.get("GPU", 0.0) + cfg.resources.shards * cfg.resources.shard_gpus
        what, key = (f"{what} and {cfg.resources.shards} gallery shards",
                     f"{key} + resources.shards x resources.shard_cpus / shard_gpus")
    check_can_ever_run(what, key, need)
    trainer = _trainer_class()(
        train_fn_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "out": store.uri, "use_gpu": use_gpu, "progress": study.progress,
                           "threads": study.threads or max(1, int(cfg.resources.cpus_per_worker)),
                           "galleries": study.galleries, "on_batch": study.on_batch},
        scaling_config=ScalingConfig(num_workers=cfg.resources.workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name="train", storage_path=store.fs_path("ray"),
                             storage_filesystem=store.filesystem if store.remote else None,
                             failure_config=FailureConfig(max_failures=cfg.resources.max_failures),
                             **_quiet_train_logs()),
    )
    trainer.fit()
    return store.read_json("results.json")
