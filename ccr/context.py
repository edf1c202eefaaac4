"""What one training step sees, below both the training loop and the strategies: the task context, the
batch, per-task seeding, caption sampling, batch making and autocast. Strategies and `ccr.train` both
import from here, never from each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ccr.config import Config
    from ccr.data.dataset import RetrievalDataset
    from ccr.models import TokenizedCaptions


def task_label(step: int, order: Sequence[str]) -> str:
    """How files and folders name the state after a task: its position counted from 1, as logs count,
    and its name (`02_boxes`), so a listing reads in order and says which task it is."""
    return f"{step + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', order[step])}"


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

    @property
    def task(self) -> str:
        return self.order[self.index]

    @property
    def seen(self) -> list[str]:
        return self.order[: self.index + 1]

    def mean_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """`t` averaged over all ranks (the same on every rank afterwards); `t` itself on one process."""
        return self.all_reduce_mean(t) if self.all_reduce_mean is not None and self.world_size > 1 else t


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


def task_seed(seed: int, index: int, salt: int = 0) -> int:
    """A seed for task `index` that does not depend on what ran before (so resumed runs match)."""
    return int(np.random.SeedSequence([seed, index, salt]).generate_state(1)[0])


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


def autocast_for(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
