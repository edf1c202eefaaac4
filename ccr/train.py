"""The per-task training loop: plain torch, one task at a time (Ray Train wraps it for DDP).

Under data parallelism each rank takes its slice of every global batch and the contrastive loss
is computed over the globally gathered embeddings (gradients kept), so W workers x batch B train
exactly the objective of 1 worker x batch W*B.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ccr import losses
from ccr.context import TaskContext, autocast_for, make_batch, sample_captions, task_seed
from ccr.data.pipeline import prefetched
from ccr.errors import ConfigError, DivergedError
from ccr.models import DualEncoder
from ccr.strategies import Strategy

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


def train_task(model: DualEncoder, ctx: TaskContext, strategy: Strategy, *, forward: torch.nn.Module | None = None,
               dist: DistInfo | None = None, progress: bool = True,
               on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train `model` on ctx.task with `strategy`'s hooks; returns summary statistics.

    `forward` is the module to call (a DDP wrapper of `model` under data parallelism).
    """
    cfg, dev = ctx.cfg.train, ctx.device
    dist = dist or DistInfo()
    forward = forward or model
    items = strategy.train_items(ctx, ctx.dataset.image_ids(ctx.task, "train"))
    salt = 1000 if ctx.pretraining else 0  # the pretraining stage draws from seeds of its own
    rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, salt))
    torch.manual_seed(task_seed(ctx.cfg.seed, ctx.index, 1 + salt))
    gb = rank_batch_size(cfg.batch_size, len(items), dist.world_size) * dist.world_size  # global batch
    steps_per_epoch = max(1, len(items) // gb) if len(items) >= 2 * dist.world_size else 0
    if steps_per_epoch == 0:
        raise ValueError(f"task {ctx.task!r} has {len(items)} training images: too few for a batch")
    n_batches = cfg.epochs * steps_per_epoch
    # optimizer steps: one per train.grad_accum batches counted over the whole task (not per epoch, which would
    # never step when an epoch has fewer batches), the last one over what remains
    total_steps = -(-n_batches // cfg.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = strategy.configure_optimizer(ctx, model, params)
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])  # each group's peak: the schedule scales it
    warm = min(cfg.warmup_steps, max(1, total_steps // 5))

    def lr_scale(step: int) -> float:  # warmup, then cosine to 10 % of the peak, per task
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, total_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    model.train()
    t0, n_pairs, step, n_loss = time.perf_counter(), 0, 0, 0
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no host sync per step
    first_bad = torch.full((), -1, device=dev)  # first batch whose loss was not finite (checked per epoch)
    last: dict[str, float] = {}
    epoch_loss: list[float] = []  # the mean loss of each epoch (read where the epoch syncs anyway)
    summed, counted = 0.0, 0
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"train {ctx.task}", leave=False,
               disable=None if (progress and dist.rank == 0) else True)
    plan = plan_batches(ctx, strategy, items, rng, steps_per_epoch, dist)
    dc = ctx.cfg.data
    images = prefetched(ctx.dataset.images, [p[0] for p in plan], dc.num_workers, dc.prefetch_factor,
                        pin_memory=dev.type == "cuda")
    for epoch in range(cfg.epochs):
        for b in range(steps_per_epoch):
            if on_batch is not None:
                on_batch(b)
            img_ids, cap_ids, n_cur = plan[epoch * steps_per_epoch + b]
            batch = make_batch(ctx, img_ids, cap_ids, n_cur, dev, next(images))
            with autocast_for(dev, cfg.amp):
                img, txt = forward(batch.images, batch.input_ids, batch.attention_mask)
                batch.img_emb, batch.txt_emb = img, txt
                gi, gt = (dist.gather(img), dist.gather(txt)) if dist.gather else (img, txt)
                batch.global_img_emb, batch.global_txt_emb = gi, gt
                terms = losses.contrastive(cfg, gi, gt, model)
                terms.update(strategy.loss_terms(ctx, model, batch))
                loss = losses.total(terms)
            i = epoch * steps_per_epoch + b  # this batch's index in the task
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
            loss_sum += loss.detach().float()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), n_loss, first_bad)
            n_loss += 1
            bar.update(1)
            if not bar.disable and n_loss % 25 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        last = {k: float(v.detach()) for k, v in terms.items()}
        total_now = float(loss_sum)
        epoch_loss.append((total_now - summed) / max(1, n_loss - counted))
        summed, counted = total_now, n_loss
        if int(first_bad) >= 0:
            bar.close()
            terms_now = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
            raise DivergedError(
                f"training diverged on task {ctx.task!r} (task {ctx.index + 1} of {len(ctx.order)}): the loss "
                f"became non-finite at batch {int(first_bad) + 1} of the task ({terms_now}); the study stops "
                "here and keeps the checkpoint of the last finished task. Lower train.lr or set train.grad_clip")
    bar.close()
    mean_loss = float(loss_sum) / max(1, n_loss)  # synchronises: the timing below includes all queued work
    secs = time.perf_counter() - t0
    stats = {"steps": step, "mean_loss": mean_loss, "seconds": secs,
             "pairs_per_s": n_pairs / secs if secs > 0 else 0.0, "train_images": int(len(items)),
             "epoch_loss": epoch_loss,
             **{f"last/{k}": v for k, v in last.items()}}
    (log.info if ctx.rank == 0 else log.debug)(  # every rank trains; one reports
        "task %s: %d steps, mean loss %.4f, %.0f pairs/s", ctx.task, step, stats["mean_loss"], stats["pairs_per_s"])
    return stats
