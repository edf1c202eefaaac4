"""Precomputed image features in the VSE++ / SCAN layout (COCO and Flickr30K as researchers have them).

`data.path` is a folder with, for each split `train`, `dev` (validation; optional) and `test`:

    {split}_ims.npy    N x D image features, or N x R x D region features (float)
    {split}_caps.txt   one caption per line, k per image in image order (k = lines / N, inferred)

`data.tasks_file` is a JSON object {"train": [task of image 0, ...], "dev": [...], "test": [...]}.
The image side of the model is then a trainable MLP on the fixed features (regions mean-pooled),
as in VSE++; the text side is unchanged. Every problem is one DataError before anything trains.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ccr.config.schema import DataConfig
from ccr.data.dataset import DataError, RetrievalDataset

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "dev": "val", "test": "test"}  # file prefix -> ccr split


class FeatureStore:
    """Image features of every split, memory-mapped; global image ids run over train, dev, test."""

    decodes = False
    image_size = 0

    def __init__(self, files: list[Path]):
        self.files = [Path(f) for f in files]
        self.arrays = [np.load(f, mmap_mode="r") for f in self.files]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.feature_dim = int(self.arrays[0].shape[-1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, ids: np.ndarray) -> torch.Tensor:
        ids = np.asarray(ids, dtype=np.int64)
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        first = self.arrays[0]
        out = np.empty((len(ids), *first.shape[1:]), np.float32)
        for p in np.unique(part):
            rows = part == p
            out[rows] = self.arrays[p][ids[rows] - self.offsets[p]]
        return torch.from_numpy(out)

    def __getstate__(self) -> dict:  # to a worker or an actor: the paths, not the pages
        return {"files": self.files}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["files"])


def _features(path: Path) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"image features {path} are not a readable .npy array: {e}") from e
    if a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.floating) or len(a) == 0:
        raise DataError(f"image features {path} must be a non-empty float array of N x D (one vector per image) "
                        f"or N x R x D (R regions per image); got {a.dtype} {a.shape}")
    bad = _non_finite_rows(a)
    if len(bad):
        raise DataError(f"image features {path}: {len(bad)} image(s) have NaN or infinite values (rows "
                        f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}); fix or drop them")
    return a


def _non_finite_rows(a: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Rows of a (memory-mapped) feature array with a NaN or inf anywhere: one pass, a chunk at a time."""
    bad = [lo + np.nonzero(~np.isfinite(a[lo:lo + chunk].reshape(len(a[lo:lo + chunk]), -1)).all(1))[0]
           for lo in range(0, len(a), chunk)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def _captions(path: Path) -> list[str]:
    try:
        # one caption per line, lines ending in \n (or \r\n): not str.splitlines, which also splits on U+2028,
        # U+0085, form feeds and other separators a caption may contain, and so misaligns captions and images
        lines = [ln.removesuffix("\r") for ln in path.read_text(encoding="utf-8").split("\n")]
    except UnicodeDecodeError as e:
        raise DataError(f"captions {path} are not UTF-8 text: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not a caption
    empty = [i + 1 for i, ln in enumerate(lines) if not ln.strip()]
    if empty:
        raise DataError(f"captions {path}: empty caption on line(s) {empty[:5]}{' ...' if len(empty) > 5 else ''}")
    return [ln.strip() for ln in lines]


def _tasks(tf: Path, present: list[str]) -> dict[str, list]:
    """The tasks file: {split: [task of image 0, task of image 1, ...]} for each split present."""
    try:
        tasks = json.loads(tf.read_text())
    except FileNotFoundError:
        raise DataError(f"tasks file (data.tasks_file) not found: {tf}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"tasks file {tf} is not valid JSON: {e}") from e
    if not isinstance(tasks, dict) or any(s not in tasks for s in present):
        raise DataError(f"tasks file {tf} must be a JSON object with a list of task names for each split "
                        f"{present} (one per image, in image order)")
    return tasks


def load_precomp(cfg: DataConfig) -> RetrievalDataset:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"precomputed-feature folder (data.path) not found: {root}")
    present = [s for s in SPLITS if (root / f"{s}_ims.npy").is_file() or (root / f"{s}_caps.txt").is_file()]
    for s in ("train", "test"):
        if s not in present:
            raise DataError(f"{root} has no {s} split: expected {s}_ims.npy and {s}_caps.txt")
    for s in present:
        for f in (f"{s}_ims.npy", f"{s}_caps.txt"):
            if not (root / f).is_file():
                raise DataError(f"{root}: {f} is missing (each split needs {s}_ims.npy and {s}_caps.txt)")
    tf = Path(cfg.tasks_file)
    tasks = _tasks(tf, present)

    arrays, names, image_task, image_split, captions, cap_img, shape = [], [], [], [], [], [], None
    for s in present:
        feats, caps = _features(root / f"{s}_ims.npy"), _captions(root / f"{s}_caps.txt")
        n = len(feats)
        if shape is None:
            shape = feats.shape[1:]
        elif feats.shape[1:] != shape:
            raise DataError(f"{s}_ims.npy has features of shape {feats.shape[1:]}, train_ims.npy {shape}: "
                            "every split needs the same feature shape")
        if len(caps) % n:
            raise DataError(f"{s}_caps.txt has {len(caps)} captions for {n} images in {s}_ims.npy: the number "
                            f"of captions per image is inferred and must divide the line count")
        t = tasks[s]
        if not isinstance(t, list) or len(t) != n or not all(isinstance(x, str) and x for x in t):
            got = f"a list of {len(t)}" if isinstance(t, list) else type(t).__name__
            raise DataError(f"tasks file {tf}: '{s}' must list one task name per image of {s}_ims.npy "
                            f"({n}), got {got}")
        k = len(caps) // n
        base = len(image_task)
        names += [f"{s}/{i}" for i in range(n)]
        image_task += t
        image_split += [SPLITS[s]] * n
        captions += caps
        cap_img += [base + i for i in range(n) for _ in range(k)]
        arrays.append(root / f"{s}_ims.npy")
        log.info("precomp %s: %d images x %s features, %d captions per image", s, n, feats.shape[1:], k)
    train_tasks = set(tasks["train"])
    unknown = sorted({x for s in present if s != "train" for x in tasks[s]} - train_tasks)
    if unknown:
        raise DataError(f"tasks file {tf}: task(s) {unknown} have dev/test images but no training image; "
                        f"the training tasks are {sorted(train_tasks)}")
    ds = RetrievalDataset(
        name=root.name, image_names=names, image_split=np.array(image_split), image_task=np.array(image_task),
        captions=captions, caption_image=np.array(cap_img, dtype=np.int64), images=FeatureStore(arrays),
        task_names=sorted(train_tasks), sources={"kind": "features", "files": [str(a) for a in arrays]})
    log.info("loaded %s: %d images, %d captions, tasks %s", root, ds.n_images, len(captions),
             dict(Counter(tasks["train"])))
    return ds
