"""Validated datasets, cached by the content of their input files.

A study loads its dataset in the driver, in every Ray Train worker and in every gallery shard actor,
and a sweep does so for every trial. Parsing and checking a real dataset (COCO's captions, Visual
Genome's region JSON) takes long; the result does not change while the inputs do not. So the first
load writes what it found (items, captions, tasks, splits, where the pixels or features are) under
`cache_dir/datasets/`, keyed by the loader's settings and a SHA-256 of every input file's content
(large binary feature files by size and modification time instead), and every later load on that
node reads it back. Image files are still looked at on every load: each must exist, and the decode
check of `check_images` reruns for any file whose size or modification time changed; if one fails,
the loader runs again (and reports what is wrong).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ccr.config.schema import DataConfig
from ccr.data.dataset import DataError, RetrievalDataset

log = logging.getLogger(__name__)

FORMAT = 2  # 2: images described by their preprocessing (ccr.io.images), not one size
INPUT_KEYS = ("path", "tasks_file", "instances", "task_map", "split_file")
# DataConfig keys that change how data is read, never what it is (ccr.study.runner's pretraining key uses them too)
READ_ONLY_KEYS = {"num_workers", "prefetch_factor", "in_memory", "image_cache", "cache_dir", "shared_cache"}
NOT_SHAPING = READ_ONLY_KEYS | {"images"}  # the image root enters the key resolved, below
HASH_CONTENT_BELOW = 256 << 20  # bytes: binary files larger than this are identified by size + mtime


def _file_digest(path: Path, h) -> None:
    st = path.stat()
    h.update(f"{path}\t{st.st_size}\n".encode())
    if path.suffix == ".npy" and st.st_size > HASH_CONTENT_BELOW:
        h.update(f"{st.st_mtime_ns}\n".encode())
        return
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def dataset_key(cfg: DataConfig, pixels) -> str | None:
    """The identity of what a loader would find, or None when an input is missing (the loader then
    raises its own clear error)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SHAPING}
    h = hashlib.sha256(json.dumps({"format": FORMAT, "pixels": pixels.describe(), "data": settings,
                                   "images": str(Path(cfg.images).resolve()) if cfg.images else None},
                                  sort_keys=True).encode())
    for key in INPUT_KEYS:
        value = getattr(cfg, key)
        if not value:
            continue
        p = Path(value)
        if not p.exists():
            return None
        for f in sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]:
            _file_digest(f, h)
    return h.hexdigest()[:24]


def load_validated(cfg: DataConfig, pixels, load: Callable[[], RetrievalDataset],
                   revive_images: Callable[[dict], object]) -> RetrievalDataset:
    """`load()` once per content; later calls rebuild the dataset from the cache, with its image store
    from `revive_images(sources)` (which checks the image files again)."""
    from ccr.data.generated import cache_root
    from ccr.io.storage import cache_write

    key = dataset_key(cfg, pixels)
    cached = cache_root(cfg.cache_dir) / "datasets" / f"{cfg.kind}-{key}.json" if key else None
    d = None
    if cached is not None and cached.is_file():
        try:
            d = json.loads(cached.read_text())
        except (OSError, ValueError) as e:  # a damaged cache file: validate again
            log.warning("ignoring the dataset cache %s (%s); validating again", cached, e)
    if d is not None:
        try:
            images = revive_images(d["sources"])
            ds = RetrievalDataset(
                name=d["name"], image_names=d["image_names"], image_split=np.array(d["image_split"]),
                image_task=np.array(d["image_task"]), captions=d["captions"],
                caption_image=np.array(d["caption_image"], dtype=np.int64), images=images,
                task_names=d["task_names"], info=d["info"], sources=d["sources"])
        except DataError as e:  # an image file moved, vanished or changed: the loader looks again
            log.info("dataset %s changed since it was validated (%s); validating again", cfg.path, e)
        except (KeyError, TypeError, ValueError, IndexError) as e:  # JSON of another shape: validated again
            log.warning("ignoring the dataset cache %s (%s: %s); validating again", cached, type(e).__name__, e)
        else:
            log.info("dataset %s: validated before (%s), %d images", cfg.path, cached.name, ds.n_images)
            return ds
    ds = load()
    if cached is not None and ds.sources:
        record = {"name": ds.name, "image_names": list(ds.image_names), "image_split": ds.image_split.tolist(),
                  "image_task": ds.image_task.tolist(), "captions": list(ds.captions),
                  "caption_image": ds.caption_image.tolist(), "task_names": list(ds.task_names), "info": ds.info,
                  "sources": ds.sources}
        data = json.dumps(record).encode()
        cache_write(cached, lambda tmp: tmp.write_bytes(data))
    return ds
