"""The embedded default benchmark: rendered shapes with varied captions, in semantic-family tasks.

Each image shows one object with a shape, colour, size and position (with jitter and a noisy
background) and has several captions drawn from varied templates and synonyms. Tasks are shape
families (round things, boxes, triangles, crosses, bars, diamonds): tasks differ in vocabulary
and colour palette (so in vocabulary and visual statistics), as category splits of COCO do, while
size and position words are shared across tasks. Generated deterministically from `data.generator_seed` and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ccr.config.schema import DataConfig
from ccr.data.dataset import ArrayImages, DataError, RetrievalDataset
from ccr.io.storage import cache_root, cache_write  # noqa: F401  (cache_root re-exported from here)

log = logging.getLogger(__name__)

FAMILIES: dict[str, tuple[str, str]] = {
    "round": ("circle", "ring"),
    "boxes": ("square", "frame"),
    "triangles": ("triangle", "wedge"),
    "crosses": ("plus", "cross"),
    "bars": ("bar", "pillar"),
    "diamonds": ("diamond", "rhombus"),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 230, 50),
    "cyan": (40, 220, 230), "magenta": (220, 50, 220), "white": (245, 245, 245), "orange": (250, 140, 20),
    "pink": (250, 160, 190), "brown": (140, 80, 30), "purple": (130, 40, 180), "navy": (20, 30, 120),
    "lime": (170, 250, 60), "teal": (20, 130, 130), "olive": (120, 130, 30), "grey": (150, 150, 150),
}
# each family has its own palette (overlapping): tasks differ in colour words and colour statistics
PALETTES: dict[str, tuple[str, ...]] = {
    "round": ("red", "orange", "yellow", "pink", "brown", "white"),
    "boxes": ("blue", "cyan", "navy", "purple", "teal", "white"),
    "triangles": ("green", "lime", "olive", "teal", "yellow", "grey"),
    "crosses": ("magenta", "purple", "pink", "red", "navy", "grey"),
    "bars": ("orange", "brown", "cyan", "lime", "olive", "blue"),
    "diamonds": ("green", "magenta", "white", "grey", "orange", "navy"),
}
# data.pretrain_pool: pretraining material of its own, for tasks.pretrain=[pool]: every shape family (those
# the sequence will learn and the held-out ones) in a neutral palette that no task uses alone
POOL = "pool"
POOL_PALETTE = ("white", "grey", "navy", "olive")
SIZES = {"small": (["small", "little", "tiny"], 0.17), "large": (["large", "big", "huge"], 0.3)}
POSITIONS = {
    "top left": (["top left", "upper left"], (0.3, 0.3)),
    "top right": (["top right", "upper right"], (0.7, 0.3)),
    "bottom left": (["bottom left", "lower left"], (0.3, 0.7)),
    "bottom right": (["bottom right", "lower right"], (0.7, 0.7)),
    "center": (["center", "middle"], (0.5, 0.5)),
}
TEMPLATES = [
    "a {size} {colour} {shape} in the {pos}",
    "{pos} : a {colour} {shape} , {size}",
    "there is a {size} {shape} coloured {colour} at the {pos}",
    "{size} {colour} {shape} located in the {pos}",
    "the picture shows a {colour} {shape} near the {pos}",
    "a {colour} {shape} , {size} , {pos} of the image",
    "one {size} {shape} in {colour} sits in the {pos}",
]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Mask of `shape` on coordinates relative to its centre, in units of its radius."""
    ax, ay = np.abs(dx), np.abs(dy)
    r = np.sqrt(dx**2 + dy**2)
    cheb, l1 = np.maximum(ax, ay), ax + ay
    masks = {
        "circle": r <= 1.0,
        "ring": (r <= 1.0) & (r >= 0.55),
        "square": cheb <= 0.8,
        "frame": (cheb <= 0.85) & (cheb >= 0.45),
        "triangle": (dy <= 0.8) & (dy >= -1.0) & (ax <= (dy + 1.0) / 1.8),
        "wedge": (dy >= -0.8) & (dy <= 1.0) & (ax <= (1.0 - dy) / 1.8),
        "plus": ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0)),
        "cross": ((np.abs(dx - dy) <= 0.42) | (np.abs(dx + dy) <= 0.42)) & (cheb <= 0.9),
        "bar": (ay <= 0.35) & (ax <= 1.0),
        "pillar": (ax <= 0.35) & (ay <= 1.0),
        "diamond": l1 <= 1.0,
        "rhombus": (l1 <= 1.05) & (l1 >= 0.55),
    }
    return masks[shape]


def render(shape: str, colour: str, size: str, pos: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """One (3, S, S) uint8 image."""
    s = image_size
    bg = rng.integers(10, 70)
    img = np.clip(rng.normal(bg, 12, size=(s, s, 3)), 0, 255)
    cx, cy = POSITIONS[pos][1]
    cx, cy = (cx + rng.uniform(-0.06, 0.06)) * s, (cy + rng.uniform(-0.06, 0.06)) * s
    radius = SIZES[size][1] * s * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    mask = _shape_mask(shape, (xx - cx) / radius, (yy - cy) / radius)
    rgb = np.array(COLOURS[colour], dtype=np.float64) * rng.uniform(0.85, 1.0)
    img[mask] = np.clip(rgb + rng.normal(0, 8, size=(int(mask.sum()), 3)), 0, 255)
    return img.astype(np.uint8).transpose(2, 0, 1)


def caption(shape: str, colour: str, size: str, pos: str, rng: np.random.Generator) -> str:
    t = TEMPLATES[rng.integers(len(TEMPLATES))]
    return t.format(size=rng.choice(SIZES[size][0]), colour=colour, shape=shape, pos=rng.choice(POSITIONS[pos][0]))


def _params(cfg: DataConfig) -> dict:
    p = {"v": 2, "n_tasks": cfg.n_tasks, "train": cfg.train_per_task, "test": cfg.test_per_task,
            "captions": cfg.captions_per_image, "size": cfg.image_size, "seed": cfg.generator_seed}
    if cfg.val_per_task:  # val is rendered after everything else: without it the benchmark is unchanged
        p["val"] = cfg.val_per_task
    if cfg.pretrain_pool:  # so is the pretraining pool
        p["pool"] = cfg.pretrain_pool
    if cfg.control_per_task:  # and the held-out families' control data
        p["control"] = cfg.control_per_task
    return p


def held_out(cfg: DataConfig) -> list[str]:
    """The shape families a benchmark of n_tasks never learns: with data.control_per_task, control tasks."""
    return list(FAMILIES)[cfg.n_tasks:] if cfg.control_per_task else []


def cache_path(cfg: DataConfig) -> Path:
    root = cache_root(cfg.cache_dir)
    key = hashlib.sha1(json.dumps(_params(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return root / f"generated-{key}.npz"


def generate(cfg: DataConfig) -> tuple[np.ndarray, dict]:
    """Render the benchmark: (images uint8 (N, 3, S, S), metadata)."""
    if cfg.n_tasks > len(FAMILIES):
        raise DataError(f"data.n_tasks={cfg.n_tasks}: the generated benchmark has {len(FAMILIES)} "
                        f"shape families ({', '.join(FAMILIES)})")
    rng = np.random.default_rng(cfg.generator_seed)
    tasks = list(FAMILIES)[: cfg.n_tasks]
    images, names, splits, img_task, captions, cap_img = [], [], [], [], [], []
    # the pool and val items come after every task's train and test items, so adding them leaves those unchanged
    plan = [(t, sp, n) for t in tasks for sp, n in (("train", cfg.train_per_task), ("test", cfg.test_per_task))]
    plan += [(POOL, "train", cfg.pretrain_pool)]  # before val: adding val items leaves the pool as it is
    plan += [(t, "val", cfg.val_per_task) for t in tasks]
    plan += [(t, "test", cfg.control_per_task) for t in held_out(cfg)]  # control data, last of all
    for task, split, n in plan:
        for _ in range(n):
            family = list(FAMILIES)[rng.integers(len(FAMILIES))] if task == POOL else task
            shape = FAMILIES[family][rng.integers(2)]
            palette = POOL_PALETTE if task == POOL else PALETTES[task]
            colour = palette[rng.integers(len(palette))]
            size = list(SIZES)[rng.integers(len(SIZES))]
            pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
            idx = len(names)
            images.append(render(shape, colour, size, pos, rng, cfg.image_size))
            names.append(f"{task}_{split}_{idx:06d}.png")
            splits.append(split)
            img_task.append(task)
            seen: set[str] = set()
            for _ in range(cfg.captions_per_image * 5):
                c = caption(shape, colour, size, pos, rng)
                if c not in seen:
                    seen.add(c)
                    captions.append(c)
                    cap_img.append(idx)
                if len(seen) == cfg.captions_per_image:
                    break
    meta = {"names": names, "splits": splits, "tasks": img_task,
            "task_names": tasks + ([POOL] if cfg.pretrain_pool else []) + held_out(cfg),
            "captions": captions, "caption_image": cap_img, "params": _params(cfg)}
    return np.stack(images), meta


def load_generated(cfg: DataConfig) -> RetrievalDataset:
    """Load the generated benchmark from the cache, rendering it on first use (atomic write)."""
    path = cache_path(cfg)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, meta = z["images"], json.loads(str(z["meta"]))
        except Exception as e:  # a corrupt cache is regenerated, never trusted
            log.warning("generated-data cache %s unreadable (%s): regenerating", path, e)
            images, meta = None, None
    else:
        images, meta = None, None
    if images is None or meta.get("params") != _params(cfg):
        log.info("rendering the generated benchmark (%d tasks) into %s", cfg.n_tasks, path)
        images, meta = generate(cfg)
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: savez would append .npz to the name
                np.savez_compressed(f, images=images, meta=np.array(json.dumps(meta)))

        cache_write(path, write)
    return RetrievalDataset(
        name="generated", image_names=meta["names"], image_split=np.array(meta["splits"]),
        image_task=np.array(meta["tasks"]), captions=meta["captions"],
        caption_image=np.array(meta["caption_image"]), images=ArrayImages(images),
        task_names=meta["task_names"], info={**({"pretrain_only": [POOL]} if POOL in meta["task_names"] else {}),
                                             **({"control_only": held_out(cfg)} if held_out(cfg) else {})},
    )
