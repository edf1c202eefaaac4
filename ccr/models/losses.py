"""Contrastive losses over a batch of matching (image, caption) pairs; each returns named terms.

Row i of the image embeddings matches row i of the text embeddings. With data parallelism the
caller passes globally gathered embeddings (`all_img`, `all_txt`) and the offset of the local rows,
so negatives come from the global batch while gradients flow through the local rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def infonce(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE (CLIP) with learnable temperature exp(-logit_scale)."""
    import torch
    import torch.nn.functional as F

    scale = logit_scale.clamp(max=4.6052).exp()  # temperature >= 0.01, as CLIP
    logits = scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return {"contrastive_loss": loss}


def vsepp(img: torch.Tensor, txt: torch.Tensor, margin: float) -> dict[str, torch.Tensor]:
    """VSE++ hinge loss with the hardest negative in the batch, in both directions (Faghri et al. 2018)."""
    import torch

    sim = img @ txt.T
    pos = sim.diag()
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    cost_t = (margin + sim - pos[:, None]).clamp_min(0).masked_fill(eye, 0)  # image -> wrong captions
    cost_i = (margin + sim - pos[None, :]).clamp_min(0).masked_fill(eye, 0)  # caption -> wrong images
    loss = cost_t.max(1).values.mean() + cost_i.max(0).values.mean()
    return {"contrastive_loss": loss}


def siglip(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every (image, caption) pair of the batch is a binary
    decision, matching or not, on scale * similarity + bias; summed over captions, averaged over images, as
    transformers' SiglipModel computes it."""
    import torch
    import torch.nn.functional as F

    logits = img @ txt.T * logit_scale.exp() + logit_bias
    labels = 2 * torch.eye(len(img), device=img.device, dtype=logits.dtype) - 1
    return {"contrastive_loss": -F.logsigmoid(labels * logits).sum(1).mean()}


LOSSES = ("infonce", "vsepp", "siglip")


def contrastive(train_cfg, img: torch.Tensor, txt: torch.Tensor, model) -> dict[str, torch.Tensor]:
    """The study's contrastive loss (train.loss) on matching rows of `img` and `txt` with `model`'s scale
    (and bias): the one way every caller (the training loop, EWC's Fisher, A-GEM's reference gradient)
    computes it. Embeddings are taken in float32 whatever the autocast."""
    kind = train_cfg.loss
    img, txt = img.float(), txt.float()
    if kind == "infonce":
        return infonce(img, txt, model.logit_scale)
    if kind == "vsepp":
        return vsepp(img, txt, train_cfg.margin)
    if kind == "siglip":
        if getattr(model, "logit_bias", None) is None:
            raise ValueError("train.loss=siglip needs a model with a logit_bias (built with that loss)")
        return siglip(img, txt, model.logit_scale, model.logit_bias)
    raise ValueError(f"unknown loss {kind!r} (choose {', '.join(LOSSES)})")


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training objective: the sum of every `*_loss` term (others are logged only)."""
    return sum(v for k, v in terms.items() if k.endswith("_loss"))
