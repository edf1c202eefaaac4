"""Image classification data in ImageFolder layout (torchvision's, and what MTIL's datasets unpack to): one
subfolder per class, the class's images inside it (nested folders too), classes in sorted folder order.

A folder or URI (staged once per node, as every data location). Decoded with the model's own preprocessing
into the node's decoded-image cache, which is also the decode check: an unreadable file is one DataError
naming it, before training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccr.errors import DataError, first_line
from ccr.io.images import Pixels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageFolder:
    """The classes (folder names, sorted), every image's path and its class index."""

    where: str  # as the user named it (a path or URI), for messages
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # (N,) int64 into `classes`

    def display_names(self, given: dict[str, str] | list[str] | None, what: str) -> list[str]:
        """The name each class is prompted by: `given` (a list in class order, or {folder: name}), else the
        folder name with '_' read as a space ('golden_retriever' -> 'golden retriever')."""
        default = [c.replace("_", " ") for c in self.classes]
        if given is None:
            return default
        if isinstance(given, list):
            if len(given) != len(self.classes):
                shown = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
                raise DataError(f"{what}: {len(given)} names for the {len(self.classes)} class folders of "
                                f"{self.where} ({shown})")
            return list(given)
        unknown = sorted(set(given) - set(self.classes))
        if unknown:
            raise DataError(f"{what}: no class folder named {', '.join(map(repr, unknown[:5]))} in {self.where}")
        return [given.get(c, d) for c, d in zip(self.classes, default, strict=True)]


def read_imagefolder(path: str, what: str, cache_dir: str | None = None) -> ImageFolder:
    """List an ImageFolder tree (staged here first when a URI); no class, or a class without images, is one
    DataError naming it."""
    from ccr.io.staging import local_location

    root = Path(local_location(path, what, cache_dir))
    if not root.is_dir():
        raise DataError(f"{what}: {path} is not a folder (ImageFolder layout: one subfolder per class, its images "
                        "inside)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{what}: {path} has no class folders (ImageFolder layout: one subfolder per class, its "
                        "images inside)")
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for i, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*")
                       if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith("."))
        if not files:
            empty.append(c)
        paths += files
        labels += [i] * len(files)
    if empty:
        from ccr.data.dataset import list_problem

        raise list_problem(f"{what}: class folders without images (files ending {', '.join(IMAGE_SUFFIXES[:4])}, "
                           f"...) in {path}", empty)
    return ImageFolder(path, classes, paths, np.asarray(labels, np.int64))


def decoded(folder: ImageFolder, pixels: Pixels, cache_dir: str | None, workers: int = 0):
    """The folder's images as the model takes them (uint8 (N, 3, H, W)): decoded once per node into the
    decoded-image cache and memory-mapped; where the cache cannot be written, decoded into memory."""
    from ccr.data.dataset import ArrayImages, FileImages, decode_checked
    from ccr.data.generated import cache_root
    from ccr.data.pipeline import cached_images

    try:
        return cached_images(FileImages(folder.paths, pixels), cache_root(cache_dir), workers)
    except OSError as e:
        log.warning("cannot write the decoded-image cache under %s (%s: %s); decoding %s into memory",
                    cache_root(cache_dir), type(e).__name__, first_line(e, 200), folder.where)
    out = np.empty((len(folder.paths), 3, *pixels.shape), np.uint8)
    decode_checked(folder.paths, pixels, out)
    return ArrayImages(out)
