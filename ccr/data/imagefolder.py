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


SPLIT_FOLDERS = ("train", "val", "test")


def load_imagefolder_task(d, pixels: Pixels):
    """A classification dataset as one task (data.kind=imagefolder, the MTIL protocol): `path` holds `train/` and
    `test/` (and optionally `val/`), each in ImageFolder layout with the same class folders, or is one ImageFolder
    whose images `split_file` ({relative path: train|val|test}) assigns. Every image is an item; its captions are
    the templates filled with its class's display name (the training pairs); its test is top-1 among the task's
    own classes (ccr.measure.classification). Decoded once per node into the decoded-image cache."""
    import json

    from ccr.config.prompts import CLIP_TEMPLATE
    from ccr.data.dataset import ClassTask, RetrievalDataset, list_problem
    from ccr.io.staging import local_location

    what = "data" if not d.name else f"data ({d.name})"
    root = Path(local_location(d.path, f"{what}.path", d.cache_dir))
    name = d.name or root.name
    if d.split_file:
        folder = read_imagefolder(str(root), f"{what}.path", d.cache_dir)
        split_path = Path(local_location(d.split_file, f"{what}.split_file", d.cache_dir))
        try:
            assigned = json.loads(split_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{what}.split_file {d.split_file}: not a readable JSON object ({first_line(e, 200)})"
                            ) from e
        if not isinstance(assigned, dict):
            raise DataError(f"{what}.split_file {d.split_file}: expected {{relative image path: train|val|test}}")
        rel = [p.relative_to(root).as_posix() for p in folder.paths]
        missing = [r for r in rel if r not in assigned]
        if missing:
            raise list_problem(f"{what}.split_file {d.split_file}: images in no split", missing)
        bad = sorted({str(v) for v in assigned.values()} - set(SPLIT_FOLDERS))
        if bad:
            raise DataError(f"{what}.split_file {d.split_file}: unknown split(s) {bad} (train, val or test)")
        split = np.array([assigned[r] for r in rel])
        classes, paths, labels = folder.classes, folder.paths, folder.labels
    else:
        have = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
        if "train" not in have or "test" not in have:
            raise DataError(f"{what}.path {d.path}: expected train/ and test/ folders (each one subfolder per class, "
                            "its images inside; val/ optional), or give data.split_file; found "
                            f"{', '.join(have) or 'neither'}")
        parts = {s: read_imagefolder(str(root / s), f"{what}.path ({s}/)", d.cache_dir) for s in have}
        classes = parts["train"].classes
        for s, f in parts.items():
            extra = sorted(set(f.classes) - set(classes))
            if extra:
                raise list_problem(f"{what}.path {d.path}: class folders in {s}/ that train/ does not have", extra)
        paths, labels, split = [], [], []
        for s, f in parts.items():
            index = np.array([classes.index(c) for c in f.classes])
            paths += f.paths
            labels.append(index[f.labels])
            split += [s] * len(f.paths)
        labels = np.concatenate(labels)
        split = np.array(split)
    folder = ImageFolder(d.path, classes, list(paths), np.asarray(labels, np.int64))
    names = folder.display_names(d.classes, f"{what}.classes")
    templates = list(d.templates or [CLIP_TEMPLATE])
    n = len(folder.paths)
    captions = [t.replace("{}", names[c]) for c in folder.labels for t in templates]
    images = decoded(folder, pixels, d.cache_dir, d.num_workers)
    log.info("imagefolder task %s: %d images (%s) of %d classes, %d prompt(s) each", name, n,
             ", ".join(f"{s} {int((split == s).sum())}" for s in SPLIT_FOLDERS if (split == s).any()), len(classes),
             len(templates))
    return RetrievalDataset(
        name=name, image_names=[p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
                                for p in folder.paths],
        image_split=split, image_task=np.full(n, name), captions=captions,
        caption_image=np.repeat(np.arange(n), len(templates)), images=images, task_names=[name],
        info={"kind": "imagefolder", "classes": len(classes), "templates": templates},
        classes={name: ClassTask(names, templates)}, class_labels=folder.labels)
