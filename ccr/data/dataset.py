"""The in-memory description of an image-caption dataset split into tasks.

Items are numbered globally: images 0..N-1 and captions 0..M-1, each caption owned by one image.
Every stage (training, indexing, querying) speaks these global ids, so shards and policies can
map results back without ambiguity.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ccr.errors import DataError  # noqa: F401  (defined there, raised and re-exported here)
from ccr.io.images import Pixels, load_image_file  # noqa: F401  (load_image_file: re-exported)

SPLITS = ("train", "val", "test")


class ImageStore(Protocol):
    """Something that returns the image side of items for global image ids: uint8 pixels (B, 3, H, W),
    or precomputed features (B, D) / (B, R, D) where `feature_dim` is set."""

    image_size: int
    decodes: bool  # loading decodes files: worth doing in DataLoader workers (ccr.data.pipeline)

    def __len__(self) -> int: ...

    def load(self, ids: np.ndarray) -> torch.Tensor: ...


class ArrayImages:
    """All images decoded once and held in memory (the generated benchmark, small datasets)."""

    decodes = False

    def __init__(self, array: np.ndarray):
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(f"expected a uint8 (N, 3, H, W) array, got {array.dtype} {array.shape}")
        with warnings.catch_warnings():  # read-only (Ray's shared object store): only ever read, never copied
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.array = torch.from_numpy(np.ascontiguousarray(array))
        self.image_size = int(array.shape[-1])

    def __len__(self) -> int:
        return len(self.array)

    def load(self, ids: np.ndarray) -> torch.Tensor:
        return self.array[torch.from_numpy(np.array(ids, dtype=np.int64))]  # a copy: ids may be read-only


class FileImages:
    """Images decoded from files on demand (real datasets that do not fit in memory at full size)."""

    decodes = True

    def __init__(self, paths: list[Path], pixels: Pixels | int):
        self.paths = paths
        self.pixels = Pixels.square(pixels) if isinstance(pixels, int) else pixels
        self.image_size = self.pixels.shape[0]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, ids: np.ndarray) -> torch.Tensor:
        if len(ids) == 0:
            return torch.empty((0, 3, *self.pixels.shape), dtype=torch.uint8)
        return torch.from_numpy(np.stack([load_image_file(self.paths[i], self.pixels) for i in ids]))


class ConcatImages:
    """The image stores of several datasets one after another (data.kind=sequence): global id i is image
    i - offsets[p] of part p."""

    def __init__(self, stores: list):
        self.stores = list(stores)
        self.offsets = np.cumsum([0] + [len(s) for s in self.stores])
        self.decodes = any(getattr(s, "decodes", False) for s in self.stores)
        self.image_size = int(self.stores[0].image_size)
        dims = {getattr(s, "feature_dim", None) for s in self.stores}
        if len(dims) > 1:
            raise DataError("a sequence cannot mix precomputed image features (data.kind=precomp) with images, or "
                            f"features of different sizes ({', '.join(sorted(str(d) for d in dims))}): one model "
                            "takes one kind of input")
        if dims != {None}:
            self.feature_dim = dims.pop()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, ids: np.ndarray) -> torch.Tensor:
        ids = np.asarray(ids, dtype=np.int64)
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        out = None
        for p in np.unique(part):
            rows = np.nonzero(part == p)[0]
            got = self.stores[p].load(ids[rows] - self.offsets[p])
            if out is None:
                out = torch.empty((len(ids), *got.shape[1:]), dtype=got.dtype)
            out[torch.from_numpy(rows)] = got
        return out if out is not None else self.stores[0].load(ids)


@dataclass
class ClassTask:
    """A task whose test is classification (data.kind=imagefolder): its classes' display names and the prompts
    that name them; each image's class is `RetrievalDataset.class_labels`."""

    names: list[str]
    templates: list[str]

    @property
    def prompts(self) -> list[str]:
        """Every class's prompts, class-major: class c's are [c * T, (c + 1) * T)."""
        return [t.replace("{}", n) for n in self.names for t in self.templates]


@dataclass
class RetrievalDataset:
    """Images with captions, splits and task labels (global ids throughout)."""

    name: str
    image_names: list[str]  # (N,)
    image_split: np.ndarray  # (N,) str
    image_task: np.ndarray  # (N,) str
    captions: list[str]  # (M,)
    caption_image: np.ndarray  # (M,) int64: owner image of each caption
    images: ImageStore
    task_names: list[str]  # natural task order
    info: dict = field(default_factory=dict)  # how the loader made it (e.g. a seeded split), for results
    sources: dict = field(default_factory=dict)  # where the image side comes from (ccr.data.validated)
    # classification tasks (data.kind=imagefolder): their classes, and each image's class index (-1: none)
    classes: dict[str, ClassTask] = field(default_factory=dict)
    class_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)
        self.image_split = np.asarray(self.image_split)
        self.image_task = np.asarray(self.image_task)
        order = np.argsort(self.caption_image, kind="stable")
        counts = np.bincount(self.caption_image, minlength=len(self.image_names))
        self._caption_order = order
        self._caption_start = np.concatenate([[0], np.cumsum(counts)])

    @property
    def n_images(self) -> int:
        return len(self.image_names)

    def image_ids(self, tasks: str | list[str], split: str) -> np.ndarray:
        """Global ids of the images of `tasks` in `split`, ascending."""
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        mask = np.isin(self.image_task, tasks) & (self.image_split == split)
        return np.nonzero(mask)[0].astype(np.int64)

    def captions_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Global ids of all captions of the given images, ascending per image."""
        parts = [self._caption_order[self._caption_start[i]:self._caption_start[i + 1]] for i in image_ids]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def caption_ids(self, tasks: str | list[str], split: str) -> np.ndarray:
        return np.sort(self.captions_of(self.image_ids(tasks, split)))

    def caption_counts(self) -> np.ndarray:
        return np.diff(self._caption_start)

    def summary(self) -> dict[str, dict[str, int]]:
        out = {}
        for t in self.task_names:
            out[t] = {s: int(len(self.image_ids(t, s))) for s in SPLITS}
        return out


def list_problem(msg: str, items: list[str]) -> DataError:
    shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
    return DataError(f"{msg}: {shown}")


def decode_checked(paths: list[Path], pixels: Pixels, out: np.ndarray, threads: int = 0) -> None:
    """Decode every image into `out` (ccr.io.images.decode_all); the unreadable ones are one DataError naming
    them. The one pass that both checks the images and makes their pixels (in memory or in the image cache)."""
    from ccr.io import images as _pixels

    bad = _pixels.decode_all(paths, pixels, out, threads)
    if bad:
        raise list_problem("unreadable image files", bad)
