"""The per-task training loop: plain torch, one task at a time (Ray Train wraps it for DDP).

Under data parallelism each rank takes its slice of every global batch and the contrastive loss
is computed over the globally gathered embeddings (gradients kept), so W workers x batch B train
exactly the objective of 1 worker x batch W*B.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ccr import seeds
from ccr.data.pipeline import prefetched
from ccr.errors import ConfigError, DivergedError
from ccr.models import DualEncoder, losses
from ccr.models.precision import autocast_for
from ccr.seeds import task_seed
from ccr.strategies import Strategy
from ccr.strategies.context import TaskContext, make_batch, sample_captions

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Data-parallel placement of this process, with the collectives the Ray layer provides: `gather`
    all-gathers a tensor keeping gradients, `all_reduce_mean` averages one over ranks."""

    rank: int = 0
    world_size: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None  # mean over ranks, same on all


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device': {name!r}, but torch sees no GPU here "
                          f"(torch {torch.__version__}); use train.device=auto or cpu")
    return torch.device(name)


def rank_batch_size(batch_size: int, n_items: int, world_size: int) -> int:
    """Rows per rank: train.batch_size, or fewer when a task has fewer items than one global batch, so that
    every rank's slice holds the same number of rows (the all-gather of embeddings needs that)."""
    return max(1, min(batch_size, n_items // world_size))


def plan_batches(ctx: TaskContext, strategy: Strategy, items: np.ndarray, rng: np.random.Generator,
                 steps_per_epoch: int, dist: DistInfo) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(image ids, caption ids, rows of the current task) of this rank's every batch of the task, decided
    here from the seeds before training starts, so that images can be decoded ahead by loader workers.
    Each epoch draws a permutation and one caption per image; a strategy may append memory items
    (`augment_batch`, which therefore sees ids only, never the model)."""
    cfg, plan = ctx.cfg.train, []
    bs = rank_batch_size(cfg.batch_size, len(items), dist.world_size)
    gb = bs * dist.world_size
    for _epoch in range(cfg.epochs):
        perm = items[rng.permutation(len(items))]
        caps = sample_captions(ctx, perm, rng)
        for b in range(steps_per_epoch):
            lo = b * gb + dist.rank * bs  # this rank's slice of the global batch
            img_ids, cap_ids = perm[lo:lo + bs], caps[lo:lo + bs]
            n_cur = len(img_ids)
            img_ids, cap_ids = strategy.augment_batch(ctx, img_ids, cap_ids)
            plan.append((img_ids, cap_ids, n_cur))
    return plan


def _schedule(ctx: TaskContext, strategy: Strategy, model: DualEncoder, total_steps: int
              ) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], Callable[[int], float]]:
    """(optimizer, trained parameters, learning-rate scale per optimizer step): warmup, then cosine to 10 % of
    each group's peak, per task."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = strategy.configure_optimizer(ctx, model, params)
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])  # each group's peak: the schedule scales it
    warm = min(ctx.cfg.train.warmup_steps, max(1, total_steps // 5))

    def lr_scale(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, total_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return opt, params, lr_scale


def _loss(ctx: TaskContext, model: DualEncoder, forward: torch.nn.Module, strategy: Strategy, batch,
          dist: DistInfo) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's total loss and its named terms (the contrastive loss over the global batch, the strategy's)."""
    with autocast_for(ctx.device, ctx.cfg.train.amp):
        img, txt = forward(batch.images, batch.input_ids, batch.attention_mask)
        batch.img_emb, batch.txt_emb = img, txt
        gi, gt = (dist.gather(img), dist.gather(txt)) if dist.gather else (img, txt)
        batch.global_img_emb, batch.global_txt_emb = gi, gt
        terms = losses.contrastive(ctx.cfg.train, gi, gt, model)
        terms.update(strategy.loss_terms(ctx, model, batch))
        return losses.total(terms), terms


def _diverged(ctx: TaskContext, first_bad: int, last: dict[str, float]) -> DivergedError:
    terms_now = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
    return DivergedError(
        f"training diverged on task {ctx.task!r} (task {ctx.index + 1} of {len(ctx.order)}): the loss "
        f"became non-finite at batch {first_bad + 1} of the task ({terms_now}); the study stops "
        "here and keeps the checkpoint of the last finished task. Lower train.lr or set train.grad_clip")


class _LossTally:
    """The task's losses summed on the device (no host sync per batch), the first non-finite one, and the mean of
    each epoch, read where an epoch ends (the one sync)."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, device=device)  # first batch whose loss was not finite
        self.n, self.epoch_loss, self.last = 0, [], {}
        self._summed, self._counted = 0.0, 0

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss.detach().float()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), self.n, self.first_bad)
        self.n += 1

    def end_epoch(self, terms: dict[str, torch.Tensor]) -> int:
        """Record the epoch's mean loss and the last batch's terms; the first non-finite batch, or -1."""
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        total_now = float(self.sum)
        self.epoch_loss.append((total_now - self._summed) / max(1, self.n - self._counted))
        self._summed, self._counted = total_now, self.n
        return int(self.first_bad)


def _steps_per_epoch(ctx: TaskContext, items: np.ndarray, dist: DistInfo) -> int:
    gb = rank_batch_size(ctx.cfg.train.batch_size, len(items), dist.world_size) * dist.world_size  # global batch
    steps = max(1, len(items) // gb) if len(items) >= 2 * dist.world_size else 0
    if steps == 0:
        raise ValueError(f"task {ctx.task!r} has {len(items)} training images: too few for a batch")
    return steps


def _peak_memory(dev: torch.device) -> dict[str, float]:
    """The task's peak memory, in MiB: on a GPU the most torch allocated during the task (peak_cuda_mb); on a
    CPU this process's peak resident set so far (peak_rss_mb: the OS keeps only the process's maximum)."""
    if dev.type == "cuda":
        return {"peak_cuda_mb": torch.cuda.max_memory_allocated(dev) / 2**20}
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": peak / (2**20 if sys.platform == "darwin" else 1024)}  # bytes on macOS, KiB on Linux


def train_task(model: DualEncoder, ctx: TaskContext, strategy: Strategy, *, forward: torch.nn.Module | None = None,
               dist: DistInfo | None = None, progress: bool = True,
               on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train `model` on ctx.task with `strategy`'s hooks; returns summary statistics.

    `forward` is the module to call (a DDP wrapper of `model` under data parallelism).
    """
    cfg, dev, dist = ctx.cfg.train, ctx.device, dist or DistInfo()
    forward = forward or model
    items = strategy.train_items(ctx, ctx.dataset.image_ids(ctx.task, "train"))
    pre = ctx.pretraining  # the pretraining stage draws from seeds of its own
    plan_salt, gen = (seeds.PRETRAIN_PLAN, seeds.PRETRAIN_TORCH) if pre else (seeds.TRAIN_PLAN, seeds.TRAIN_TORCH)
    rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, plan_salt))
    torch.manual_seed(task_seed(ctx.cfg.seed, ctx.index, gen))
    steps_per_epoch = _steps_per_epoch(ctx, items, dist)
    n_batches = cfg.epochs * steps_per_epoch
    # optimizer steps: one per train.grad_accum batches counted over the whole task (not per epoch, which would
    # never step when an epoch has fewer batches), the last one over what remains
    opt, params, lr_scale = _schedule(ctx, strategy, model, -(-n_batches // cfg.grad_accum))
    model.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0, n_pairs, step, tally = time.perf_counter(), 0, 0, _LossTally(dev)
    bar = tqdm(total=n_batches, desc=f"train {ctx.task}", leave=False,
               disable=None if (progress and dist.rank == 0) else True)
    plan = plan_batches(ctx, strategy, items, rng, steps_per_epoch, dist)
    images = prefetched(ctx.dataset.images, [p[0] for p in plan], ctx.cfg.data.num_workers,
                        ctx.cfg.data.prefetch_factor, pin_memory=dev.type == "cuda")
    for i, (img_ids, cap_ids, n_cur) in enumerate(plan):  # i: this batch's index in the task
        if on_batch is not None:
            on_batch(i % steps_per_epoch)
        batch = make_batch(ctx, img_ids, cap_ids, n_cur, dev, next(images))
        loss, terms = _loss(ctx, model, forward, strategy, batch, dist)
        group = min(cfg.grad_accum, n_batches - i // cfg.grad_accum * cfg.grad_accum)  # batches in its step
        (loss / group).backward()
        if (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches:
            strategy.after_backward(ctx, model, batch)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_scale(step)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        n_pairs += n_cur * dist.world_size
        tally.add(loss)
        bar.update(1)
        if not bar.disable and tally.n % 25 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if (i + 1) % steps_per_epoch == 0 and (bad := tally.end_epoch(terms)) >= 0:
            bar.close()
            raise _diverged(ctx, bad, tally.last)
    bar.close()
    mean_loss = float(tally.sum) / max(1, tally.n)  # synchronises: the timing below includes all queued work
    secs = time.perf_counter() - t0
    stats = {"steps": step, "mean_loss": mean_loss, "seconds": secs,
             "pairs_per_s": n_pairs / secs if secs > 0 else 0.0, "train_images": int(len(items)),
             "epoch_loss": tally.epoch_loss, **{f"last/{k}": v for k, v in tally.last.items()},
             "trainable_params": int(sum(p.numel() for p in params)), **_peak_memory(dev)}
    (log.info if ctx.rank == 0 else log.debug)(  # every rank trains; one reports
        "task %s: %d steps, mean loss %.4f, %.0f pairs/s", ctx.task, step, stats["mean_loss"], stats["pairs_per_s"])
    return stats
