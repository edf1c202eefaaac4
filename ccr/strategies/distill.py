"""Function-space strategies that keep a frozen copy of the previous model: LwF-style distillation
and a backward-compatibility loss (BCT-style) that keeps new queries searchable in old galleries."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccr.errors import ConfigError
from ccr.models import losses
from ccr.models.precision import no_grad
from ccr.strategies.base import Batch, Strategy, register

if TYPE_CHECKING:
    import torch


class _OldModel(Strategy):
    """Snapshots θ_{t-1}, frozen and in eval mode, before each task after the first."""

    def __init__(self, params=None):
        super().__init__(params)
        self.old: torch.nn.Module | None = None

    def before_task(self, ctx, model):
        self.old = None
        if ctx.index > 0:
            self.old = copy.deepcopy(model).eval()
            for q in self.old.parameters():
                q.requires_grad_(False)

    @no_grad
    def old_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.old(batch.images, batch.input_ids, batch.attention_mask)

    def new_and_old(self, ctx, batch: Batch) -> tuple[torch.Tensor, ...]:
        """(new image, new text, old image, old text) embeddings of the global batch (every rank's rows: the
        terms are those of one process with the whole batch), in fp32."""
        oi, ot = self.old_embeddings(batch)
        ni, nt = batch.global_embeddings()
        return ni.float(), nt.float(), ctx.gather_rows(oi).float(), ctx.gather_rows(ot).float()

    def after_task(self, ctx, model):
        self.old = None  # rebuilt from the model before the next task (also after a resume)


def similarity_distillation(new_img, new_txt, old_img, old_txt, tau: float) -> torch.Tensor:
    """KL(old || new) of the in-batch image->text and text->image similarity distributions."""
    import torch.nn.functional as F

    n, o = new_img @ new_txt.T / tau, old_img @ old_txt.T / tau
    kl = F.kl_div(F.log_softmax(n, 1), F.log_softmax(o, 1), log_target=True, reduction="batchmean")
    kl_t = F.kl_div(F.log_softmax(n.T, 1), F.log_softmax(o.T, 1), log_target=True, reduction="batchmean")
    return 0.5 * (kl + kl_t)


def embedding_distillation(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """1 - cosine between new and old embeddings of the same items (zero when they agree)."""
    return (1 - (new * old).sum(-1)).mean()


@dataclass
class LwFParams:
    emb_weight: float = 1.0  # embedding distillation (per modality)
    sim_weight: float = 1.0  # similarity-structure distillation
    tau: float = 0.1  # temperature of the distilled similarity distributions

    def check(self, key: str) -> None:
        if self.emb_weight < 0 or self.sim_weight < 0 or self.tau <= 0:
            raise ConfigError(f"{key}: weights must be >= 0 and tau > 0")


@register
class LwF(_OldModel):
    """Learning without Forgetting (Li & Hoiem, ECCV 2016) for a dual encoder: the frozen previous
    model's embeddings of the current batch (per modality) and its in-batch image-text similarity
    structure are distilled into the new model."""

    name = "lwf"
    source = "Li & Hoiem 2016, adapted to embeddings and similarity structure"
    Params = LwFParams
    relative_work = 1.25  # bench/strategy_work.py

    def loss_terms(self, ctx, model, batch):
        if self.old is None:
            return {}
        ni, nt, oi, ot = self.new_and_old(ctx, batch)
        p = self.params
        return {
            "lwf_emb_loss": p.emb_weight * (embedding_distillation(ni, oi) + embedding_distillation(nt, ot)),
            "lwf_sim_loss": p.sim_weight * similarity_distillation(ni, nt, oi, ot, p.tau),
        }


@dataclass
class CompatParams:
    reg_weight: float = 1.0  # regression of new embeddings to the old model's
    cross_weight: float = 1.0  # cross-model contrastive: new queries vs old-model gallery embeddings

    def check(self, key: str) -> None:
        if self.reg_weight < 0 or self.cross_weight < 0:
            raise ConfigError(f"{key}: weights must be >= 0")


@register
class Compat(_OldModel):
    """Backward-compatible training (in the spirit of BCT, Shen et al., CVPR 2020): new embeddings of
    current data are pulled towards the old model's space, and new queries must retrieve the old
    model's gallery embeddings (InfoNCE across models), so `no_reindex` galleries stay searchable."""

    name = "compat"
    source = "Shen et al. 2020 (BCT), adapted to cross-modal retrieval"
    Params = CompatParams
    relative_work = 1.3  # bench/strategy_work.py

    def loss_terms(self, ctx, model, batch):
        if self.old is None:
            return {}
        ni, nt, oi, ot = self.new_and_old(ctx, batch)
        p = self.params
        scale = model.logit_scale
        # new captions -> old images (t2i on an old gallery) and new images -> old captions (i2t)
        cross = 0.5 * (losses.infonce(oi, nt, scale)["contrastive_loss"]
                       + losses.infonce(ni, ot, scale)["contrastive_loss"])
        reg = embedding_distillation(ni, oi) + embedding_distillation(nt, ot)
        return {"compat_cross_loss": p.cross_weight * cross, "compat_reg_loss": p.reg_weight * reg}


@dataclass
class CClipParams:
    ckc_weight: float = 1.0  # weight of the contrastive knowledge consolidation term beside the CLIP loss
    tau: float = 0.07  # CKC's temperature
    projector_hidden: int = 2  # the projector h_ψ's hidden width, in multiples of the embedding dimension

    def check(self, key: str) -> None:
        if self.ckc_weight < 0 or self.tau <= 0 or self.projector_hidden < 1:
            raise ConfigError(f"{key}: ckc_weight must be >= 0, tau > 0 and projector_hidden >= 1")


@register
class CClip(_OldModel):
    """C-CLIP (Liu et al., "C-CLIP: Multimodal Continual Learning for Vision-Language Model", ICLR 2025): each task
    is learned in LoRA adapters, which are merged into the backbone after the task and started again for the
    next; and contrastive knowledge consolidation (CKC, the paper's Eq. 5): a projector h_ψ, trained with the
    task, maps the new model's image and text embeddings of a pair, and their concatenation is contrasted
    (InfoNCE both ways, temperature τ) with the frozen previous model's concatenation of the same pair, the
    other pairs of the batch the negatives. Loss: CLIP's + ckc_weight · CKC (Eq. 6, weight 1 in the paper).

    Where ccr departs: ccr's encoders give unit embeddings, so the projector takes those (the paper projects the
    features before normalisation); h_ψ is ccr's choice of shape (Linear D → hD, ReLU, Linear hD → D: the
    text does not pin it down), started afresh (seeded) for each task. Under data parallelism the projector is
    applied to the gathered global batch, so every rank computes the same, exact projector gradient and CKC is
    the term of one process with the global batch. The merged base weights are kept in every checkpoint (they
    change with each task, unlike a plain adapter's base)."""

    name = "cclip"
    source = "Liu et al. 2025 (C-CLIP, ICLR)"
    Params = CClipParams
    relative_work = 1.35  # bench/strategy_work.py

    def __init__(self, params=None):
        super().__init__(params)
        self.projector: torch.nn.Module | None = None

    def check(self, cfg):
        if cfg.model.adapter.kind != "lora":
            raise ConfigError("strategy cclip learns each task in LoRA adapters and merges them after it (C-CLIP): "
                              "set model.adapter.kind=lora (and model.adapter.r, its rank)")

    def before_task(self, ctx, model):
        import torch

        from ccr import seeds
        from ccr.seeds import task_seed

        super().before_task(ctx, model)
        # the merged weights change with every task: checkpoints keep them (a plain adapter's base never changes)
        lora_bases = {n for n in getattr(model, "base_names", set()) if n.endswith(".base_layer.weight")}
        model.base_names = set(model.base_names) - lora_bases
        d, h = model.embed_dim, model.embed_dim * self.params.projector_hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task_seed(ctx.cfg.seed, ctx.index, seeds.CCLIP_PROJECTOR))
            self.projector = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, d)
                                                 ).to(ctx.device)

    def configure_optimizer(self, ctx, model, params):
        return super().configure_optimizer(ctx, model, [*params, *self.projector.parameters()])

    def loss_terms(self, ctx, model, batch):
        if self.old is None:
            return {}
        import torch
        import torch.nn.functional as F

        ni, nt, oi, ot = self.new_and_old(ctx, batch)
        h = F.normalize(torch.cat([self.projector(ni), self.projector(nt)], dim=-1), dim=-1)
        z = F.normalize(torch.cat([oi, ot], dim=-1), dim=-1)
        logits = h @ z.T / self.params.tau
        labels = torch.arange(len(h), device=h.device)
        ckc = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        return {"cclip_ckc_loss": self.params.ckc_weight * ckc}

    def after_task(self, ctx, model):
        from ccr import seeds
        from ccr.models.adapters import merge_and_restart
        from ccr.seeds import task_seed

        super().after_task(ctx, model)
        self.projector = None
        merge_and_restart(model, task_seed(ctx.cfg.seed, ctx.index + 1, seeds.ADAPTER_INIT))  # task index+1's
