"""Loader for the Karpathy JSON format (Flickr30K, MS-COCO) with task assignment.

Every problem with the files (missing or unreadable image, image with no caption, bad split)
is a DataError raised here, before any model is built or trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ccr.config.schema import DataConfig
from ccr.data.dataset import (
    ArrayImages,
    DataError,
    FileImages,
    ImageStore,
    RetrievalDataset,
    decode_checked,
    list_problem,
)
from ccr.errors import first_line
from ccr.io.images import Pixels

log = logging.getLogger(__name__)

SPLIT_MAP = {"train": "train", "restval": "train", "val": "val", "test": "test"}
PRELOAD_BYTES = 2 << 30  # decode once into memory when the whole set fits in this many bytes


def _read_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {p} is not valid JSON: {e}") from e


def tasks_from_instances(path: str | Path, task_map: dict[str, str] | None = None) -> dict[str, str]:
    """COCO instances annotations, read with pycocotools -> {file_name: task}: the supercategory of the
    image's largest object, or, with `task_map` ({category name: task}), the task of its largest object
    whose category is mapped. Images without such an object get no task."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    if not Path(path).is_file():
        raise DataError(f"COCO instances file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(path))
        cats = coco.loadCats(coco.getCatIds())
        label = {c["id"]: (task_map.get(c["name"]) if task_map is not None else c["supercategory"]) for c in cats}
        out = {}
        for img in coco.loadImgs(coco.getImgIds()):
            anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])) if label.get(a["category_id"])]
            if anns:
                biggest = max(anns, key=lambda a: float(a.get("area", 0.0)))
                out[img["file_name"]] = label[biggest["category_id"]]
    except json.JSONDecodeError as e:
        raise DataError(f"COCO instances file {path} is not valid JSON: {e}") from e
    except (AssertionError, KeyError, TypeError) as e:  # pycocotools asserts on the layout
        raise DataError(f"COCO instances file {path} lacks the expected fields "
                        f"(categories/images/annotations): {e!r}") from e
    if task_map is not None:
        names = {c["name"] for c in cats}
        unknown = sorted(set(task_map) - names)
        if unknown:
            raise list_problem(f"data.task_map names categories that {path} does not have", unknown)
    return out


def _check_readable(path: Path) -> str | None:
    """Decode the whole image: `Image.verify()` does not decode JPEG data, so a truncated file passes
    it and fails hours later, mid-study."""
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f"{path} ({type(e).__name__}: {str(e)[:80]})"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def check_images(paths: list[Path], cache_dir: str | None) -> list[str]:
    """Decode-check every image once, in parallel; the verdict of a readable file is cached by its path,
    size and modification time (under the data cache), so the next study, or the next trial of a sweep
    on this node, checks only what changed. Returns the unreadable files."""
    from ccr.data.generated import cache_root
    from ccr.io.storage import cache_write

    key = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:16]
    cache = cache_root(cache_dir) / "image_checks" / f"{key}.json"
    try:
        good = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        good = {}
    stamps = {p: _stamp(p) for p in paths}  # one stat per file
    todo = [p for p in paths if good.get(str(p)) != stamps[p]]
    with ThreadPoolExecutor(max(4, os.cpu_count() or 1)) as pool:
        verdicts = list(pool.map(_check_readable, todo))
    bad = [v for v in verdicts if v]
    if todo:
        good.update({str(p): stamps[p] for p, v in zip(todo, verdicts, strict=True) if v is None})
        data = json.dumps(good).encode()
        cache_write(cache, lambda tmp: Path(tmp).write_bytes(data))
    return bad


def verify_images(paths: list[Path], root: Path, cache_dir: str | None) -> None:
    """Every image file exists and decodes (the decode verdicts are cached by size and mtime)."""
    _check_present(paths, root)
    unreadable = check_images(paths, cache_dir)
    if unreadable:
        raise list_problem("unreadable image files", unreadable)


def _check_present(paths: list[Path], root: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise list_problem(f"missing image files under {root}", missing)


def image_sources(paths: list[Path], pixels: Pixels) -> dict:
    """How ccr.data.validated finds a dataset's pixels again."""
    return {"kind": "image_files", "paths": [str(p) for p in paths], "pixels": pixels.describe()}


def checked_images(paths: list[Path], pixels: Pixels, cfg: DataConfig) -> ImageStore:
    """Every image exists and decodes, and the store training and indexing read pixels from, in one pass over
    the files: a decoded-image cache (data.image_cache: per node, or shared by the cluster through storage),
    every image decoded into memory (data.in_memory; by default when they fit in 2 GiB), or the files
    themselves after a decode check (whose verdicts are cached by size and mtime)."""
    import time

    from ccr.io.staging import event, materialize, pending_files

    root = Path(cfg.images or ".")
    listed = pending_files(root)  # the image folder in storage, not copied here (yet): its listing says what is there
    if listed is not None:
        missing = [str(p) for p in paths if os.path.relpath(p, root) not in listed]
        if missing:
            raise list_problem(f"missing image files under {cfg.images} (in storage)", missing)
    else:
        _check_present(paths, root)
    if cfg.image_cache:
        from ccr.data.generated import cache_root
        from ccr.data.pipeline import cached_images
        from ccr.io.storage import Storage

        shared = Storage(cfg.shared_cache) if cfg.image_cache == "shared" and cfg.shared_cache else None
        try:
            return cached_images(FileImages(paths, pixels), cache_root(cfg.cache_dir), cfg.num_workers,
                                 shared=shared, root=root, sizes=listed)
        except OSError as e:  # the cache folder cannot be written: the images are decoded as they are read
            log.warning("cannot write the decoded-image cache under %s (%s: %s); reading the image files instead",
                        cache_root(cfg.cache_dir), type(e).__name__, first_line(e, 200))
    materialize(root)
    h, w = pixels.shape
    fits = len(paths) * 3 * h * w <= PRELOAD_BYTES
    if cfg.in_memory if cfg.in_memory is not None else fits:
        started = time.time()
        out = np.empty((len(paths), 3, h, w), np.uint8)
        decode_checked(paths, pixels, out)
        event(cfg.cache_dir, "decoded", images=len(paths), into="memory", seconds=round(time.time() - started, 3))
        return ArrayImages(out)
    started = time.time()
    verify_images(paths, root, cfg.cache_dir)
    event(cfg.cache_dir, "checked", images=len(paths), seconds=round(time.time() - started, 3))
    return FileImages(paths, pixels)


class _OneTask(dict):
    """Every image in one task (an entry of data.kind=sequence without a task assignment: the dataset is the task)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def get(self, key, default=None):
        return self.name


def _task_assignment(cfg: DataConfig) -> dict[str, str]:
    """Image filename -> task: from data.tasks_file, or by COCO instances (largest object; data.task_map); in a
    sequence's entry without either, the entry's name for every image."""
    if not cfg.tasks_file and not cfg.instances and cfg.name:
        return _OneTask(cfg.name)
    if cfg.tasks_file:
        assign = _read_json(cfg.tasks_file, "tasks file (data.tasks_file)")
        if not isinstance(assign, dict) or not all(isinstance(v, str) for v in assign.values()):
            raise DataError(f"tasks file {cfg.tasks_file} must be a JSON object: image filename -> task name")
        return assign
    tmap = None
    if cfg.task_map:
        tmap = _read_json(cfg.task_map, "task map (data.task_map)")
        if not isinstance(tmap, dict) or not all(isinstance(v, str) and v for v in tmap.values()):
            raise DataError(f"task map {cfg.task_map} must be a JSON object: category name -> task name")
    return tasks_from_instances(cfg.instances, tmap)


@dataclass
class _Entries:
    """What the entries of a Karpathy file hold, and what is wrong with them (refused together, by name)."""

    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    cap_img: list[int] = field(default_factory=list)
    no_caption: list[str] = field(default_factory=list)
    bad_split: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    unassigned: int = 0
    empty: int = 0


def _entry_captions(entry: dict, fn: str, where: str) -> list[str]:
    raw = [s.get("raw", "") for s in entry.get("sentences") or [] if isinstance(s, dict)]
    if any(not isinstance(r, str) for r in raw):
        raise DataError(f"dataset file {where}: image {fn}: a caption ('raw') is not a string: "
                        f"{next(r for r in raw if not isinstance(r, str))!r}"[:300])
    return [r.strip() for r in raw]


def _parse_entries(images: list, cfg: DataConfig, root: Path, assign: dict[str, str]) -> _Entries:
    e, base = _Entries(), os.path.normpath(root)
    for entry in images:
        if not isinstance(entry, dict):
            raise DataError(f"dataset file {cfg.path}: an image entry is not an object: {str(entry)[:120]}")
        fn = entry.get("filename")
        if not fn:
            raise DataError(f"dataset file {cfg.path}: an image entry has no 'filename': {str(entry)[:120]}")
        task = assign.get(fn)
        if task is None:
            e.unassigned += 1
            continue
        split = SPLIT_MAP.get(entry.get("split", ""))
        if split is None:
            e.bad_split.append(f"{fn} ({entry.get('split')!r})")
            continue
        sents = _entry_captions(entry, fn, cfg.path)
        e.empty += sum(1 for s in sents if not s)
        sents = [s for s in sents if s]
        if not sents:
            e.no_caption.append(fn)
            continue
        rel = os.path.join(str(entry.get("filepath") or ""), str(fn))
        # lexically, before anything is opened: `../` or an absolute path must not reach outside the image
        # root (symlinks inside the root may point anywhere: datasets use them)
        if os.path.isabs(rel) or not os.path.normpath(os.path.join(base, rel)).startswith(base + os.sep):
            e.outside.append(rel)
            continue
        e.cap_img.extend([len(e.names)] * len(sents))
        e.names.append(fn)
        e.paths.append(root / rel)
        e.splits.append(split)
        e.tasks.append(task)
        e.captions.extend(sents)
    return e


def _refuse(e: _Entries, cfg: DataConfig, root: Path) -> None:
    if e.outside:
        raise list_problem(f"image paths that leave data.images ({root}); refused", e.outside)
    twice = [str(p) for p, n in Counter(e.paths).items() if n > 1]
    if twice:  # the same image twice would sit twice in a gallery
        raise list_problem("images listed twice (the same filepath/filename)", twice)
    if e.bad_split:
        raise list_problem("images with an unknown split (expected train/restval/val/test)", e.bad_split)
    if e.no_caption:
        raise list_problem("images with no caption", e.no_caption)
    if not e.names:
        raise DataError(f"no image of {cfg.path} has a task in the task assignment")


def load_karpathy(cfg: DataConfig, pixels: Pixels) -> RetrievalDataset:
    """Load a Karpathy-format dataset; tasks from `tasks_file` or COCO supercategories."""
    data = _read_json(cfg.path, "dataset file (data.path)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"dataset file {cfg.path} must be a JSON object with an 'images' list (Karpathy format)")
    from ccr.io.staging import pending_files

    root = Path(cfg.images)
    if not root.is_dir() and pending_files(root) is None:  # (a folder in storage, listed but not copied: is one)
        raise DataError(f"image folder (data.images) not found: {root}")
    e = _parse_entries(data["images"], cfg, root, _task_assignment(cfg))
    _refuse(e, cfg, root)
    if e.unassigned:
        log.warning("%d images have no task in the task assignment and are left out", e.unassigned)
    store = checked_images(e.paths, pixels, cfg)
    ds = RetrievalDataset(
        name=Path(cfg.path).stem, image_names=e.names, image_split=np.array(e.splits),
        image_task=np.array(e.tasks), captions=e.captions, caption_image=np.array(e.cap_img), images=store,
        task_names=sorted(set(e.tasks)), sources=image_sources(e.paths, pixels),
        info={"left_out": {"without a task": e.unassigned, "empty captions": e.empty}},
    )
    log.info("loaded %s: %d images, %d captions, tasks %s", cfg.path, len(e.names), len(e.captions),
             dict(Counter(e.tasks)))
    return ds
