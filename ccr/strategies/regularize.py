"""Parameter-space strategies: EWC (penalise moving important weights) and freezing (forbid it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ccr import seeds
from ccr.errors import ConfigError
from ccr.models import losses
from ccr.seeds import task_seed
from ccr.strategies.base import Strategy, TaskContext, register
from ccr.strategies.context import make_batch, sample_captions

if TYPE_CHECKING:
    import torch


@dataclass
class EWCParams:
    lam: float = 100.0  # penalty weight (Fisher is normalised to mean 1 over all parameters)
    online: bool = False  # online EWC: one running Fisher with decay instead of one term per task
    gamma: float = 0.9  # online decay of the running Fisher
    fisher_batches: int = 32  # batches of the task just learned used to estimate the Fisher
    fisher_batch_size: int = 16

    def check(self, key: str) -> None:
        if self.lam < 0 or not 0 < self.gamma <= 1 or self.fisher_batches < 1 or self.fisher_batch_size < 2:
            raise ConfigError(f"{key}: need lam >= 0, 0 < gamma <= 1, fisher_batches >= 1, fisher_batch_size >= 2")


@register
class EWC(Strategy):
    """Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017); online variant (Schwarz et al., ICML 2018).

    The diagonal (empirical) Fisher of the retrieval loss over both encoders and projections is
    estimated on the task just learned; moving a weight costs lam/2 * F * (θ - θ*)^2. Under DDP the
    ranks share out the Fisher's batches and all-reduce it: every rank holds the penalty one process would.

    The per-task penalties Σ_t F_t (θ - θ*_t)^2 are one quadratic, kept as F = Σ_t F_t, a centre
    μ = Σ_t F_t θ*_t / F and a constant (so the loss value is unchanged): the state, and so every
    checkpoint, has the size of two models however many tasks have been learned. Online EWC keeps
    γ F + F_new centred on the newest θ*.
    """

    name = "ewc"
    source = "Kirkpatrick et al. 2017; Schwarz et al. 2018 (online)"
    Params = EWCParams
    relative_work = 1.1  # bench/strategy_work.py

    def __init__(self, params=None):
        super().__init__(params)
        self.fisher: dict[str, torch.Tensor] = {}  # F = Σ_t F_t (online: decayed)
        self.centre: dict[str, torch.Tensor] = {}  # μ
        self.constant = 0.0  # Σ_t F_t (θ*_t - μ)^2 over all weights: the penalty's value at θ = μ

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        import torch

        named = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for n, f in self.fisher.items():
            total = total + (f * (named[n] - self.centre[n]) ** 2).sum()
        return 0.5 * self.params.lam * (total + self.constant)

    def loss_terms(self, ctx, model, batch):
        return {"ewc_loss": self.penalty(model)} if self.fisher else {}

    def estimate_fisher(self, ctx: TaskContext, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The mean over `fisher_batches` batches of the squared gradient of the batch loss. The batches are
        drawn the same on every rank and shared out among them (rank r computes batches r, r+W, ...); the
        sums are all-reduced, so W workers estimate exactly what one process does."""
        import torch

        p = self.params
        rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, seeds.EWC_FISHER))
        items = ctx.dataset.image_ids(ctx.task, "train")
        named = {n: q for n, q in model.named_parameters() if q.requires_grad}
        fisher = {n: torch.zeros_like(q) for n, q in named.items()}
        was = model.training
        model.eval()
        for i in range(p.fisher_batches):
            ids = rng.choice(items, min(p.fisher_batch_size, len(items)), replace=False)
            caps = sample_captions(ctx, ids, rng)
            if i % ctx.world_size != ctx.rank:
                continue  # another rank's batch (drawn all the same, so the generator stays in step)
            b = make_batch(ctx, ids, caps, len(ids), ctx.device)
            model.zero_grad(set_to_none=True)
            img, txt = model(b.images, b.input_ids, b.attention_mask)
            loss = losses.total(losses.contrastive(ctx.cfg.train, img, txt, model))
            loss.backward()
            for k, q in named.items():
                if q.grad is not None:
                    fisher[k] += q.grad.detach() ** 2
        model.zero_grad(set_to_none=True)
        model.train(was)
        for k in fisher:  # the sum over all ranks' batches (mean over ranks x ranks), over all batches
            fisher[k] = ctx.mean_over_ranks(fisher[k]) * (ctx.world_size / p.fisher_batches)
        mean = torch.cat([f.flatten() for f in fisher.values()]).mean().clamp_min(1e-20)
        return {k: f / mean for k, f in fisher.items()}

    def after_task(self, ctx, model):
        self.add(self.estimate_fisher(ctx, model), {n: q.detach().clone() for n, q in model.named_parameters()})

    def add(self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> None:
        """Fold one task's quadratic F_t (θ - θ*_t)^2 into the running one (online: decay, re-centre)."""
        import torch

        if self.params.online or not self.fisher:
            g = self.params.gamma if self.fisher else 0.0
            self.fisher = {n: g * self.fisher.get(n, 0) + f for n, f in fisher.items()}
            self.centre = {n: anchor[n] for n in fisher}
            self.constant = 0.0
            return
        for n, f in fisher.items():
            old, mu, th = self.fisher[n], self.centre[n], anchor[n]
            both = old + f
            # a F (x - m)^2 + b (x - t)^2 = (a + b)(x - (a m + b t)/(a + b))^2 + ab/(a + b) (m - t)^2
            self.constant += float((torch.where(both > 0, old * f / both, 0) * (mu - th) ** 2).sum())
            self.centre[n] = torch.where(both > 0, (old * mu + f * th) / both, th)
            self.fisher[n] = both

    def state_dict(self):
        return {"fisher": self.fisher, "centre": self.centre, "constant": self.constant}

    def load_state_dict(self, state):
        self.fisher, self.centre = state.get("fisher", {}), state.get("centre", {})
        self.constant = float(state.get("constant", 0.0))
        for anchor, fisher in state.get("terms", []):  # a checkpoint of ccr 0.1: one (anchor, Fisher) per task
            self.add(fisher, anchor)


FREEZE_PARTS = {
    "image": ("image_encoder",),
    "text": ("text_encoder",),
    "image_side": ("image_encoder", "image_proj"),
    "text_side": ("text_encoder", "text_proj"),
    "encoders": ("image_encoder", "text_encoder"),  # all but the projections (and temperature)
}


@dataclass
class FreezeParams:
    part: str = "image_side"  # image | text | image_side | text_side | encoders

    def check(self, key: str) -> None:
        if self.part not in FREEZE_PARTS:
            raise ConfigError(f"{key}.part: {self.part!r} is not one of {', '.join(FREEZE_PARTS)}")


@register
class Freeze(Strategy):
    """Freeze chosen parts after the first task: the simplest way to keep one side of an index valid
    (e.g. a frozen image side means the image gallery never needs re-indexing)."""

    name = "freeze"
    source = "baseline (partial fine-tuning)"
    Params = FreezeParams
    relative_work = 0.6  # bench/strategy_work.py

    def before_task(self, ctx, model):
        if ctx.index == 0:
            return
        model.freeze(FREEZE_PARTS[self.params.part])
