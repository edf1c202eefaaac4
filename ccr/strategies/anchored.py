"""Strategies anchored at θ0, the model the sequence starts from (pretrained): WiSE-FT, MagMaX and ZSCL.

Both keep θ0. Its parameters that can change (with an adapter: all but the frozen base) are taken before
the first task and checkpointed with the strategy, so a resumed study anchors at the same θ0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ccr import seeds
from ccr.errors import ConfigError, DataError
from ccr.models.precision import autocast_for, no_grad
from ccr.seeds import task_seed
from ccr.strategies.base import Strategy, register
from ccr.strategies.context import make_batch, sample_captions

if TYPE_CHECKING:
    import torch


class _Anchored(Strategy):
    """Holds θ0: {name: tensor} of the parameters outside the adapter's frozen base."""

    def __init__(self, params=None):
        super().__init__(params)
        self.initial: dict[str, torch.Tensor] = {}

    def before_task(self, ctx, model):
        if not self.initial:  # the first task (a resumed study has it from its checkpoint)
            base = getattr(model, "base_names", set())
            self.initial = {n: p.detach().clone() for n, p in model.named_parameters() if n not in base}

    def initial_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of `model` with θ0's parameters, in eval mode."""
        import torch

        m = copy.deepcopy(model).eval()
        named = dict(m.named_parameters())
        with torch.no_grad():
            for n, t in self.initial.items():
                named[n].copy_(t)
        for q in m.parameters():
            q.requires_grad_(False)
        return m

    def state_dict(self):
        return {"initial": self.initial}

    def load_state_dict(self, state):
        self.initial = dict(state.get("initial", {}))


@dataclass
class WiSEFTParams:
    alpha: float = 0.5  # weight of the fine-tuned model: θ <- (1 - alpha) θ0 + alpha θ after each task

    def check(self, key: str) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"{key}.alpha: must be in [0, 1], got {self.alpha}")


@register
class WiSEFT(_Anchored):
    """WiSE-FT (Wortsman et al., CVPR 2022) applied after every task, as "patching" does (Ilharco et al.,
    NeurIPS 2022): θ <- (1 - α) θ0 + α θ. α = 0 keeps θ0 (every row of the recall matrix is the zero-shot
    row), α = 1 is fine-tuning. With LoRA adapters θ0's update is zero: interpolating the effective weights
    scales each adapter's B by α (A stays), so the adapted layer is exactly (1 - α) W0 + α (W0 + BA)."""

    name = "wiseft"
    source = "Wortsman et al. 2022 (WiSE-FT); Ilharco et al. 2022 (patching)"
    Params = WiSEFTParams

    @no_grad
    def after_task(self, ctx, model):
        a = self.params.alpha
        for n, p in model.named_parameters():
            if n not in self.initial:
                continue  # the adapter's frozen base: θ0's own
            if ".lora_A." in n:
                continue
            if ".lora_B." in n:
                p.mul_(a)
            else:
                p.copy_((1 - a) * self.initial[n] + a * p)


@dataclass
class MagMaxParams:
    scale: float = 0.5  # λ: θ = θ0 + λ · maxmag(τ1..τt); MagMaX's code merges with 0.5

    def check(self, key: str) -> None:
        if not 0 <= self.scale <= 1:
            raise ConfigError(f"{key}.scale: must be in [0, 1], got {self.scale}")


@register
class MagMax(_Anchored):
    """MagMaX (Marczak et al., ECCV 2024): sequential fine-tuning, and after every task the model evaluated is
    θ0 + λ · maxmag(τ1, ..., τt), τi = θi_ft - θ0 the task vector of the weights fine-tuned through task i,
    maxmag taking per parameter entry the τi of largest magnitude (the first on a tie, as the authors'
    merge_max_abs). Training goes on from θt_ft, not from the merged model: the strategy keeps θt_ft and the
    running maxmag (maxmag of the t vectors is maxmag of the previous result and τt) and puts θt_ft back before
    the next task. Where ccr departs from the paper: the paper merges once, after the last task; ccr merges
    after every task so that every row of the recall matrix is the model MagMaX would deploy at that point."""

    name = "magmax"
    source = "Marczak et al. 2024 (MagMaX)"
    Params = MagMaxParams

    def __init__(self, params=None):
        super().__init__(params)
        self.finetuned: dict[str, torch.Tensor] = {}  # θt_ft: where the next task trains from
        self.merged: dict[str, torch.Tensor] = {}  # maxmag(τ1..τt)

    def check(self, cfg):
        super().check(cfg)
        if cfg.model.adapter.kind != "none":
            raise ConfigError("strategy magmax merges task vectors entry by entry: with model.adapter the entries are "
                              "LoRA's A and B, whose merge is not the merge of the updates BA; use magmax without "
                              "an adapter")

    @no_grad
    def before_task(self, ctx, model):
        super().before_task(ctx, model)
        named = dict(model.named_parameters())
        for n, t in self.finetuned.items():  # from task 2 on: train from θ_ft, not from the merged model
            named[n].copy_(t)

    @no_grad
    def after_task(self, ctx, model):
        import torch

        for n, p in model.named_parameters():
            if n not in self.initial:
                continue
            self.finetuned[n] = p.detach().clone()
            tau = p - self.initial[n]
            best = self.merged.get(n)
            best = tau.clone() if best is None else torch.where(tau.abs() > best.abs(), tau, best)
            self.merged[n] = best
            p.copy_(self.initial[n] + self.params.scale * best)

    def state_dict(self):
        return {**super().state_dict(), "finetuned": self.finetuned, "merged": self.merged}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.finetuned = dict(state.get("finetuned", {}))
        self.merged = dict(state.get("merged", {}))


@dataclass
class ZSCLParams:
    # reference data: tasks never trained (their training items), or [] for the pretraining tasks (tasks.pretrain)
    reference: list[str] = field(default_factory=list)
    batch_size: int = 32  # reference pairs per rank and step
    temperature: float = 2.0  # ZSCL's T: distributions softened by T, the loss scaled by T^2
    weight: float = 1.0
    average_every: int = 10  # weight ensemble: average the weights every this many steps (0: off)

    def check(self, key: str) -> None:
        if self.batch_size < 2 or self.temperature <= 0 or self.weight < 0 or self.average_every < 0:
            raise ConfigError(f"{key}: need batch_size >= 2, temperature > 0, weight >= 0, average_every >= 0")


def soft_distillation(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    """ZSCL's distillation: cross-entropy of the student's softened distribution against the teacher's, per
    row, times T^2 (Hinton et al. 2015)."""
    import torch.nn.functional as F

    return F.cross_entropy(student / t, F.softmax(teacher / t, dim=1)) * t * t


@register
class ZSCL(_Anchored):
    """ZSCL (Zheng et al., ICCV 2023): distil θ0's image–text similarity distributions on reference data into
    the model being trained, in both directions, and average the weights along each task (weight ensemble).

    Each step draws a reference batch (images with one caption each) from tasks the sequence never trains;
    θ0 and the current model embed it; the logits are the current logit scale times the similarities (as
    ZSCL's code); the loss is soft_distillation(θ0's, current, T) image->text plus text->image. The weight
    ensemble keeps the running mean of the weights every `average_every` steps and at the end of the task,
    and the task ends on that mean (ZSCL's WE). Where ccr departs from the paper: ZSCL distils a classifier's
    distribution over class-name prompts of a reference set (ImageNet, Conceptual Captions); ccr's retrieval
    setting distils the in-batch distributions over the reference batch's own captions and images, and the
    reference set is the study's own held-out or pretraining data.
    """

    name = "zscl"
    source = "Zheng et al. 2023 (ZSCL)"
    Params = ZSCLParams
    relative_work = 2.2  # bench/strategy_work.py

    def __init__(self, params=None):
        super().__init__(params)
        self.ref: torch.nn.Module | None = None
        self.rng: np.random.Generator | None = None
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0
        self.steps = 0
        self.items = np.zeros(0, np.int64)  # the reference images, found once per task (not per step)

    def reference_tasks(self, cfg) -> list[str]:
        return list(self.params.reference) or list(cfg.tasks.pretrain)

    def check(self, cfg) -> None:
        super().check(cfg)
        if not self.reference_tasks(cfg):
            hint = (" On the generated benchmark, data.pretrain_pool=N adds a task 'pool' of N images for it: "
                    "--set data.pretrain_pool=200 --set strategy.params.zscl.reference=[pool]"
                    if cfg.data.kind == "generated" else "")
            raise ConfigError("strategy zscl needs reference data: strategy.params.zscl.reference (tasks never "
                              "trained) or tasks.pretrain." + hint)

    def validate(self, cfg, ds, order) -> None:
        super().validate(cfg, ds, order)
        tasks = self.reference_tasks(cfg)
        bad = [t for t in tasks if t not in ds.task_names]
        if bad:
            raise DataError(f"strategy.params.zscl.reference: unknown task(s) {bad}; the dataset's tasks are "
                            f"{ds.task_names}")
        bad = [t for t in tasks if t in order or t in cfg.eval.control]
        if bad:
            raise ConfigError(f"strategy.params.zscl.reference: {bad} are trained or control data; reference data "
                              "must be neither")
        if len(ds.image_ids(tasks, "train")) < 2:
            raise DataError(f"strategy.params.zscl.reference {tasks}: fewer than 2 training images")

    def before_task(self, ctx, model):
        super().before_task(ctx, model)
        self.ref = self.initial_model(model)
        # the same draws on every rank
        self.rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, seeds.ZSCL_REFERENCE))
        self.items = ctx.dataset.image_ids(self.reference_tasks(ctx.cfg), "train")
        self.mean, self.count, self.steps = {}, 0, 0

    def kept_items(self):
        """The reference data: every image of the reference tasks, with all its captions."""
        return self.items, None

    def loss_terms(self, ctx, model, batch):
        import torch

        p = self.params
        items = self.items
        n = max(1, min(p.batch_size, len(items) // ctx.world_size))
        ids = self.rng.choice(items, n * ctx.world_size, replace=len(items) < n * ctx.world_size)
        caps = sample_captions(ctx, ids, self.rng)
        mine = ctx.global_slice(n)
        b = make_batch(ctx, ids[mine], caps[mine], n, ctx.device)
        with autocast_for(ctx.device, ctx.cfg.train.amp):
            ci, ct = model(b.images, b.input_ids, b.attention_mask)
            with torch.no_grad():
                ri, rt = self.ref(b.images, b.input_ids, b.attention_mask)
        ci, ct = ctx.gather_rows(ci).float(), ctx.gather_rows(ct).float()
        ri, rt = ctx.gather_rows(ri).float(), ctx.gather_rows(rt).float()
        scale = model.logit_scale.exp()
        cur, ref = scale * ci @ ct.T, scale.detach() * ri @ rt.T
        t = p.temperature
        loss = soft_distillation(ref, cur, t) + soft_distillation(ref.T, cur.T, t)
        return {"zscl_loss": p.weight * loss}

    @no_grad
    def _merge(self, model) -> None:
        for n, q in model.named_parameters():
            if q.requires_grad:
                m = self.mean.get(n)
                self.mean[n] = q.detach().clone() if m is None else (m * self.count + q.detach()) / (self.count + 1)
        self.count += 1

    def after_backward(self, ctx, model, batch):
        if self.params.average_every and self.steps % self.params.average_every == 0:
            self._merge(model)  # the weights before this step: the iterate the previous step produced
        self.steps += 1

    @no_grad
    def after_task(self, ctx, model):
        if self.params.average_every:
            self._merge(model)
            named = dict(model.named_parameters())
            for n, m in self.mean.items():
                named[n].copy_(m)
        self.ref, self.mean = None, {}
