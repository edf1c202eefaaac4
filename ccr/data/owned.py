"""The items one gallery shard owns: its own images and tokenized captions, and nothing else.

A shard actor embeds only the gallery entries whose ids hash to it (ccr.distributed.sharded.shard_of); the driver
hands each shard those items instead of every actor loading the whole dataset. Images a node reads by URI
(distractors' shards) travel as their index rows, read where they are embedded; images from node-local files
(staged copies, the image cache, generated arrays: the tasks' test and val items) travel as pixels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where rows are read: ccr.index.gallery (and so a config's check) needs
    import torch  # `positions` only, and checking a config imports no torch


class LoadedRows:
    """Rows already read (pixels or features) held in memory, renumbered 0..n-1."""

    decodes = False

    def __init__(self, data: torch.Tensor, image_size: int, feature_dim: int | None = None):
        self.data, self.image_size = data, image_size
        if feature_dim is not None:
            self.feature_dim = feature_dim

    def __len__(self) -> int:
        return len(self.data)

    def load(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        return self.data[torch.as_tensor(np.asarray(rows, np.int64))]


def subset(store: Any, ids: np.ndarray) -> Any:
    """`store`'s items `ids` (ascending) as a store of rows 0..len(ids)-1: by reference where the store reads by
    URI (it has `subset`), else read here."""
    ids = np.asarray(ids, np.int64)
    if hasattr(store, "offsets") and hasattr(store, "stores"):  # ConcatImages: each part's own
        from ccr.data.dataset import ConcatImages

        part = np.searchsorted(store.offsets, ids, side="right") - 1
        parts = [subset(store.stores[p], ids[part == p] - store.offsets[p]) for p in np.unique(part)]
        if parts:
            return ConcatImages(parts) if len(parts) > 1 else parts[0]
    elif hasattr(store, "subset"):
        return store.subset(ids)
    return LoadedRows(store.load(ids), store.image_size, getattr(store, "feature_dim", None))


class OwnedImages:
    """An image store that answers for its own global ids only (an ImageStore)."""

    def __init__(self, ids: np.ndarray, rows: Any):
        self.ids, self.rows = np.asarray(ids, np.int64), rows
        self.decodes = getattr(rows, "decodes", False)
        self.image_size = rows.image_size
        if getattr(rows, "feature_dim", None) is not None:
            self.feature_dim = rows.feature_dim

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, ids: np.ndarray) -> torch.Tensor:
        return self.rows.load(_rows(self.ids, ids, "image"))


class OwnedTokens:
    """Tokenized captions of its own global caption ids only (what an Embedder asks of TokenizedCaptions)."""

    def __init__(self, ids: np.ndarray, tokens: Any):
        self.ids, self.tokens = np.asarray(ids, np.int64), tokens

    def batch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens.batch(_rows(self.ids, np.asarray(ids, np.int64), "caption"))


def positions(own: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `ids` sits in the ascending `own`, and whether it is there at all."""
    rows = np.searchsorted(own, ids)
    ok = (rows < len(own)) & (own[np.minimum(rows, max(len(own) - 1, 0))] == ids) if len(own) else rows < 0
    return rows, ok


def _rows(own: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    rows, ok = positions(own, ids)
    if not ok.all():
        raise KeyError(f"{what} ids this shard does not own: {ids[~ok][:5].tolist()}")
    return rows


@dataclasses.dataclass
class OwnedItems:
    """One shard's items: what an Embedder reads (`images`, and `tokens` for captions)."""

    images: OwnedImages
    tokens: OwnedTokens

    @classmethod
    def of(cls, images: Any, tokens: Any, image_ids: np.ndarray, caption_ids: np.ndarray) -> OwnedItems:
        """The items `image_ids`, `caption_ids` (ascending) of a dataset's image store and its tokenized captions
        (a TokenizedCaptions: its rows are copied)."""
        import torch

        rows = torch.as_tensor(np.asarray(caption_ids, np.int64))
        own_tokens = dataclasses.replace(tokens, input_ids=tokens.input_ids[rows].clone(),
                                         attention_mask=tokens.attention_mask[rows].clone())
        return cls(OwnedImages(image_ids, subset(images, image_ids)), OwnedTokens(caption_ids, own_tokens))
