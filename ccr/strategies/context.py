"""What one training step sees, below both the training loop and the strategies: the task context, the
batch, per-task seeding, caption sampling, batch making and autocast. Strategies and `ccr.train` both
import from here, never from each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ccr.config.schema import Config
    from ccr.data.dataset import RetrievalDataset
    from ccr.models import TokenizedCaptions



@dataclass
class TaskContext:
    """What a strategy may look at while task `task` (index `index` of `order`) is learned."""

    index: int
    order: list[str]
    dataset: RetrievalDataset
    tokens: TokenizedCaptions
    cfg: Config
    device: torch.device
    rank: int = 0
    world_size: int = 1
    # mean of a tensor over all data-parallel ranks (given by the Ray layer; None: one process)
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
    pretraining: bool = False  # the joint stage before the sequence (its own seeds; `task` is then a list)
    # all-gather of per-row tensors (equal rows on every rank) in rank order, keeping gradients; None: one process
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def task(self) -> str:
        return self.order[self.index]

    @property
    def seen(self) -> list[str]:
        return self.order[: self.index + 1]

    def mean_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """`t` averaged over all ranks (the same on every rank afterwards); `t` itself on one process."""
        return self.all_reduce_mean(t) if self.all_reduce_mean is not None and self.world_size > 1 else t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `t` (B, ...) -> the global batch (W*B, ...), differentiable, in rank order; `t`
        on one process. A term computed on gathered rows is the term of one process with the global batch,
        which is what makes a strategy's loss the same under data parallelism (W x B == 1 x W*B)."""
        return self.gather(t) if self.gather is not None and self.world_size > 1 else t

    def global_slice(self, n_per_rank: int) -> slice:
        """This rank's rows of a global draw of n_per_rank * world_size items (the same draw on every rank)."""
        return slice(self.rank * n_per_rank, (self.rank + 1) * n_per_rank)


@dataclass
class Batch:
    """One training batch. Rows [:n_current] come from the current task; later rows from memory."""

    image_ids: np.ndarray
    caption_ids: np.ndarray
    images: torch.Tensor  # (B, 3, H, W) uint8
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_current: int
    img_emb: torch.Tensor | None = None  # (B, D) from the model being trained
    txt_emb: torch.Tensor | None = None
    # the same over the global batch (every rank's rows, gathered with gradients; = img_emb on one process)
    global_img_emb: torch.Tensor | None = None
    global_txt_emb: torch.Tensor | None = None

    def global_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, text) embeddings of the global batch; this process's own where nothing was gathered."""
        if self.global_img_emb is None:
            return self.img_emb, self.txt_emb
        return self.global_img_emb, self.global_txt_emb


def sample_captions(ctx: TaskContext, image_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One caption per image, drawn uniformly among that image's captions."""
    ds = ctx.dataset
    counts = ds.caption_counts()[image_ids]
    pick = (rng.random(len(image_ids)) * counts).astype(np.int64)
    return ds._caption_order[ds._caption_start[image_ids] + pick]


def make_batch(ctx: TaskContext, image_ids: np.ndarray, caption_ids: np.ndarray, n_current: int,
               device: torch.device, images: torch.Tensor | None = None) -> Batch:
    """The batch of these items on `device`; `images` when the input pipeline has loaded them already."""
    ids, mask = ctx.tokens.batch(caption_ids)
    images = ctx.dataset.images.load(image_ids) if images is None else images
    nb = device.type == "cuda"
    return Batch(image_ids, caption_ids, images.to(device, non_blocking=nb), ids.to(device, non_blocking=nb),
                 mask.to(device, non_blocking=nb), n_current)
