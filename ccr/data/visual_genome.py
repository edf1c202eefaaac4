"""Visual Genome in its published JSON layout, as a retrieval dataset of images and region phrases.

`data.path` holds `image_data.json`, `region_descriptions.json` and `objects.json`; image files are
`{image_id}.jpg` under `data.images` or its `VG_100K/` and `VG_100K_2/` subfolders.

- Captions: per image, the region phrases of at least `data.min_caption_words` words, de-duplicated
  case-insensitively, longest first, `data.captions_per_image` of them (default 5).
- Tasks: `data.tasks_file` ({"<image_id>": task}) or `data.task_map` ({object name: task}): an image
  goes to the task of its most frequent mapped object name, ties to the task listed first in the map.
- Splits: `data.split_file` ({"<image_id>": "train"|"val"|"test"}) or a split seeded by
  `data.generator_seed`: `data.val_per_task` and `data.test_per_task` images of each task.

Images without a task, a split or a usable phrase are left out, with a count in the log and in the
results; every malformed input is one DataError before anything trains.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ccr.config.schema import DataConfig
from ccr.data.dataset import DataError, RetrievalDataset, list_problem
from ccr.data.karpathy import _read_json, checked_images, image_sources
from ccr.io.images import Pixels

log = logging.getLogger(__name__)

FILES = ("image_data.json", "region_descriptions.json", "objects.json")
SUBFOLDERS = ("", "VG_100K", "VG_100K_2")


def _records(data: Any, path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not isinstance(data, list) or any(not isinstance(r, dict) or any(f not in r for f in fields) for r in data):
        raise DataError(f"{path} must be a JSON list of objects with {', '.join(repr(f) for f in fields)} "
                        "(Visual Genome's published layout)")
    return data


def _each(records: list[dict], path: Path, fn) -> list:
    """fn(record) for every record; a record whose values are not what the layout says (an id that is no
    number, a region or object that is not a JSON object) is one DataError naming it, not a traceback."""
    out = []
    for n, r in enumerate(records):
        try:
            out.append(fn(r))
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise DataError(f"{path}: record {n + 1} is malformed ({type(e).__name__}: {str(e)[:100]}): "
                            f"{json.dumps(r, default=str)[:160]}") from e
    return out


def _dicts(items: Any, what: str) -> list[dict]:
    items = items or []
    if not isinstance(items, list) or any(not isinstance(x, dict) for x in items):
        raise TypeError(f"'{what}' must be a list of JSON objects")
    return items


def phrases_for(regions: list[dict], k: int, min_words: int) -> list[str]:
    """The k longest distinct phrases (case-insensitive) of at least `min_words` words."""
    seen: dict[str, str] = {}
    for r in regions:
        p = " ".join(str(r.get("phrase") or "").split())
        if len(p.split()) >= min_words and p.lower() not in seen:
            seen[p.lower()] = p
    return sorted(seen.values(), key=len, reverse=True)[:k]  # stable: equal lengths keep file order


def task_by_objects(objects: list[dict], task_map: dict[str, str]) -> str | None:
    """The task of the most frequent mapped object name; ties go to the name listed first in the map."""
    rank = {name: i for i, name in enumerate(task_map)}
    counts = Counter(n for o in objects for n in {" ".join(str(x).lower().split()) for x in o.get("names") or []}
                     if n in task_map)
    if not counts:
        return None
    best = max(counts.items(), key=lambda kv: (kv[1], -rank[kv[0]]))[0]
    return task_map[best]


def _load_map(path: str, what: str) -> dict[str, str]:
    m = _read_json(path, what)
    if not isinstance(m, dict) or not all(isinstance(v, str) and v for v in m.values()):
        raise DataError(f"{what} {path} must be a JSON object of string keys to non-empty task names")
    return m


def load_visual_genome(cfg: DataConfig, pixels: Pixels) -> RetrievalDataset:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"Visual Genome folder (data.path) not found: {root}")
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise DataError(f"Visual Genome folder {root} lacks {', '.join(missing)} (expected {', '.join(FILES)})")
    img_root = Path(cfg.images)
    if not img_root.is_dir():
        raise DataError(f"image folder (data.images) not found: {img_root}")
    images = _records(_read_json(root / FILES[0], "Visual Genome image data"), root / FILES[0], ("image_id",))
    regions = _records(_read_json(root / FILES[1], "Visual Genome regions"), root / FILES[1], ("id", "regions"))
    objects = _records(_read_json(root / FILES[2], "Visual Genome objects"), root / FILES[2], ("image_id", "objects"))
    k = cfg.captions_per_image or 5
    phrases = dict(_each(regions, root / FILES[1], lambda r: (
        int(r["id"]), phrases_for(_dicts(r["regions"], "regions"), k, cfg.min_caption_words))))
    objs = dict(_each(objects, root / FILES[2], lambda o: (int(o["image_id"]), _dicts(o["objects"], "objects"))))
    ids = _each(images, root / FILES[0], lambda im: int(im["image_id"]))
    twice = [str(i) for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise list_problem(f"image ids listed twice in {root / FILES[0]}", twice)

    task_of = _task_of(cfg, ids, objs)

    kept = [i for i in ids if i in task_of and phrases.get(i)]
    counts = {"without a task": sum(i not in task_of for i in ids),
              "without a usable region phrase": sum(i in task_of and not phrases.get(i) for i in ids)}
    split_of, info = _splits(cfg, kept, task_of)
    counts["without a split"] = sum(i not in split_of for i in kept)
    kept = [i for i in kept if i in split_of]
    for why, n in counts.items():
        if n:
            log.warning("Visual Genome: %d images %s are left out", n, why)
    if not kept:
        raise DataError(f"no image of {root / FILES[0]} has a task, a split and a region phrase")

    paths = _image_files(img_root, kept)
    captions, cap_img = [], []
    for n, i in enumerate(kept):
        captions += phrases[i]
        cap_img += [n] * len(phrases[i])
    tasks = [task_of[i] for i in kept]
    ds = RetrievalDataset(
        name=root.name or "visual_genome", image_names=[str(i) for i in kept],
        image_split=np.array([split_of[i] for i in kept]), image_task=np.array(tasks), captions=captions,
        caption_image=np.array(cap_img, dtype=np.int64), images=checked_images(paths, pixels, cfg),
        task_names=sorted(set(tasks)), info={"split": info, "left_out": counts},
        sources=image_sources(paths, pixels))
    log.info("loaded Visual Genome %s: %d images, %d phrases, tasks %s", root, len(kept), len(captions),
             dict(Counter(tasks)))
    return ds


def _task_of(cfg: DataConfig, ids: list[int], objs: dict[int, list]) -> dict[int, str]:
    """Image id -> task: from data.tasks_file ({image_id: task}), or by its objects (data.task_map)."""
    if cfg.tasks_file:
        assigned = _load_map(cfg.tasks_file, "tasks file (data.tasks_file)")
        strange = [k for k in assigned if not k.isdigit() or int(k) not in set(ids)]
        if strange:
            raise list_problem(f"tasks file {cfg.tasks_file} names image ids that are not in {FILES[0]}", strange)
        return {int(k): v for k, v in assigned.items()}
    tmap = {" ".join(k.lower().split()): v for k, v in _load_map(cfg.task_map, "task map (data.task_map)").items()}
    return {i: t for i in ids if (t := task_by_objects(objs.get(i, []), tmap)) is not None}


def _image_files(img_root: Path, kept: list[int]) -> list[Path]:
    """Each kept image's file (VG_100K/ and VG_100K_2/ searched too); the missing ones refused by name."""
    paths, absent = [], []
    for i in kept:
        found = next((p for sub in SUBFOLDERS if (p := img_root / sub / f"{i}.jpg").is_file()), None)
        paths.append(found)
        if found is None:
            absent.append(f"{i}.jpg")
    if absent:
        raise list_problem(f"missing image files under {img_root} (also searched VG_100K/, VG_100K_2/)", absent)
    return paths


def _splits(cfg: DataConfig, kept: list[int], task_of: dict[int, str]) -> tuple[dict[int, str], dict]:
    if cfg.split_file:
        raw = _load_map(cfg.split_file, "split file (data.split_file)")
        bad = [f"{k} ({v!r})" for k, v in raw.items() if v not in ("train", "val", "test")]
        if bad:
            raise list_problem(f"split file {cfg.split_file}: splits must be train, val or test", bad)
        return {int(k): v for k, v in raw.items() if k.isdigit()}, {"kind": "file", "file": str(cfg.split_file)}
    rng = np.random.default_rng(cfg.generator_seed)
    split_of: dict[int, str] = {}
    short = []
    for t in sorted({task_of[i] for i in kept}):
        members = np.array(sorted(i for i in kept if task_of[i] == t))
        members = members[rng.permutation(len(members))]
        n_test, n_val = cfg.test_per_task, cfg.val_per_task
        if len(members) <= n_test + n_val:
            short.append(f"{t} ({len(members)} images)")
            continue
        for j, i in enumerate(members.tolist()):
            split_of[i] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    if short:
        raise list_problem(f"tasks too small for data.test_per_task={cfg.test_per_task} and "
                            f"data.val_per_task={cfg.val_per_task} with training images left", short)
    return split_of, {"kind": "seeded", "seed": cfg.generator_seed, "test_per_task": cfg.test_per_task,
                      "val_per_task": cfg.val_per_task}
