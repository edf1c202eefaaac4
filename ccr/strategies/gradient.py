"""Gradient-space strategies: A-GEM projects each step's gradient so that it does not increase the loss
on an episodic memory of past tasks (it reaches the optimizer's input through `after_backward`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ccr import seeds
from ccr.errors import ConfigError
from ccr.models import losses
from ccr.models.precision import autocast_for
from ccr.seeds import task_seed
from ccr.strategies.base import register
from ccr.strategies.context import make_batch
from ccr.strategies.replay import EpisodicMemory, WithMemory

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    import torch


@dataclass
class AGEMParams:
    memory: int = 200  # episodic memory: pairs kept over all past tasks (an even share per task)
    ref_batch: int = 32  # memory pairs per rank whose gradient is the reference at each step

    def check(self, key: str) -> None:
        if self.memory < 1 or self.ref_batch < 2:
            raise ConfigError(f"{key}: need memory >= 1 and ref_batch >= 2 (a contrastive batch needs negatives)")


def project(g: torch.Tensor, g_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A-GEM's rule: g unchanged when g·g_ref >= 0, else g minus its component along g_ref (so that the
    result has zero inner product with g_ref). Returns (gradient, whether it was projected)."""
    import torch

    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g, False
    return g - (dot / torch.dot(g_ref, g_ref).clamp_min(1e-30)) * g_ref, True


@register
class AGEM(WithMemory):
    """Averaged GEM (Chaudhry et al., ICLR 2019): after each backward pass, the gradient g is compared with
    the gradient g_ref of the contrastive loss on a batch drawn from an episodic memory of past tasks;
    when they conflict (g·g_ref < 0), g is projected onto the half-space g·g_ref >= 0, so the step does
    not increase the memory loss to first order. Under data parallelism g is already averaged by DDP and
    g_ref is averaged over ranks here (each rank draws its own memory batch), so every rank applies the
    same projected gradient. The memory is a seeded random sample of each task's training pairs."""

    name = "agem"
    source = "Chaudhry et al. 2019"
    Params = AGEMParams
    relative_work = 1.7  # bench/strategy_work.py

    def __init__(self, params=None):
        super().__init__(params)
        self.memory = EpisodicMemory(self.params.memory)
        self.rng: np.random.Generator | None = None
        self.steps = self.projected = 0  # this task's optimizer steps, and how many were projected

    def before_task(self, ctx, model):
        # the same draws on every rank
        self.rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, seeds.AGEM_REFERENCE))
        self.steps = self.projected = 0

    def reference_gradient(self, ctx, model, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The flat gradient of the memory loss (averaged over ranks), without touching `.grad`."""
        import torch

        imgs, caps = self.memory.pairs()
        n = max(1, min(self.params.ref_batch, len(imgs) // ctx.world_size))
        # one reference batch for all ranks, each embedding its slice: the loss of the gathered rows is the
        # reference loss of one process with the whole batch, on every rank
        pick = self.rng.choice(len(imgs), n * ctx.world_size, replace=len(imgs) < n * ctx.world_size)
        pick = pick[ctx.global_slice(n)]
        b = make_batch(ctx, imgs[pick], caps[pick], len(pick), ctx.device)
        cfg = ctx.cfg.train
        with autocast_for(ctx.device, cfg.amp):
            img, txt = model(b.images, b.input_ids, b.attention_mask)  # the module itself: no DDP hooks fire
            loss = losses.total(losses.contrastive(cfg, ctx.gather_rows(img), ctx.gather_rows(txt), model))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params,
                                                                                                 strict=True)])
        return ctx.mean_over_ranks(flat.float())

    def after_backward(self, ctx, model, batch):
        import torch

        if len(self.memory) < 2:
            return
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        g = torch.cat([p.grad.flatten().float() for p in params])
        new, changed = project(g, self.reference_gradient(ctx, model, params))
        self.steps += 1
        if changed:
            self.projected += 1
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(new[offset:offset + n].view_as(p.grad))
                offset += n

    def after_task(self, ctx, model):
        import torch

        if ctx.index > 0 and ctx.rank == 0:
            log.info("agem: %d of %d steps of task %s projected", self.projected,
                                             self.steps, ctx.task)
        if ctx.world_size > 1:  # every rank must have applied the same projected gradient
            total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
            mean = ctx.mean_over_ranks(total)
            if not torch.isclose(mean, total, rtol=1e-9, atol=1e-12):
                raise RuntimeError(f"agem: rank {ctx.rank}'s parameters differ from the other ranks' after task "
                                   f"{ctx.task!r}: the reference gradient was not averaged over ranks")
        imgs, caps, rng = self.memory.candidates(ctx, seeds.AGEM_CANDIDATES)
        order = rng.permutation(len(imgs))[:self.memory.share()]
        self.memory.add(ctx.task, imgs[order], caps[order])
