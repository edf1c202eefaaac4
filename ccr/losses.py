"""Contrastive losses over a batch of matching (image, caption) pairs; each returns named terms.

Row i of the image embeddings matches row i of the text embeddings. With data parallelism the
caller passes globally gathered embeddings (`all_img`, `all_txt`) and the offset of the local rows,
so negatives come from the global batch while gradients flow through the local rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE (CLIP) with learnable temperature exp(-logit_scale)."""
    scale = logit_scale.clamp(max=4.6052).exp()  # temperature >= 0.01, as CLIP
    logits = scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return {"contrastive_loss": loss}


def vsepp(img: torch.Tensor, txt: torch.Tensor, margin: float) -> dict[str, torch.Tensor]:
    """VSE++ hinge loss with the hardest negative in the batch, in both directions (Faghri et al. 2018)."""
    sim = img @ txt.T
    pos = sim.diag()
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    cost_t = (margin + sim - pos[:, None]).clamp_min(0).masked_fill(eye, 0)  # image -> wrong captions
    cost_i = (margin + sim - pos[None, :]).clamp_min(0).masked_fill(eye, 0)  # caption -> wrong images
    loss = cost_t.max(1).values.mean() + cost_i.max(0).values.mean()
    return {"contrastive_loss": loss}


def contrastive(kind: str, img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                margin: float) -> dict[str, torch.Tensor]:
    if kind == "infonce":
        return infonce(img, txt, logit_scale)
    if kind == "vsepp":
        return vsepp(img, txt, margin)
    raise ValueError(f"unknown loss {kind!r} (choose infonce or vsepp)")


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training objective: the sum of every `*_loss` term (others are logged only)."""
    return sum(v for k, v in terms.items() if k.endswith("_loss"))
