"""`ccr data`: a dataset card, the answer to "did ccr read my dataset the way I meant?" before a sweep runs.

It loads the dataset exactly as a study would (staging URIs on this node, the same checks, the same caches)
and shows what it found: items and captions per task and split, captions per image, caption lengths, image
sizes, what was left out and why, the task order and its checks, and where the staged copies and caches are.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ccr.config.schema import Config
from ccr.io.images import Pixels

SIZES_AT_MOST = 20_000  # image headers read for the sizes: all of them up to this many, else an even sample


def _header_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:  # the header only: no decoding
            return im.size
    except Exception:  # noqa: BLE001 - the loader's decode check names unreadable files; here: not counted
        return None


def image_sizes(paths: list[str]) -> dict[str, Any]:
    """Width and height quantiles of the image files (all, or an even sample of SIZES_AT_MOST)."""
    pick = paths if len(paths) <= SIZES_AT_MOST else [paths[i] for i in
                                                       np.linspace(0, len(paths) - 1, SIZES_AT_MOST).astype(int)]
    with ThreadPoolExecutor(max(4, os.cpu_count() or 1)) as pool:
        found = [s for s in pool.map(_header_size, pick) if s]
    if not found:  # not on this node: their pixels come from the shared image cache
        return {"read": 0, "of": len(paths)}
    sizes = np.array(found)
    common = Counter(map(tuple, sizes.tolist())).most_common(3)
    return {"read": len(pick), "of": len(paths),
            "width": _quantiles(sizes[:, 0]), "height": _quantiles(sizes[:, 1]),
            "most_common": [f"{w}x{h} ({n})" for (w, h), n in common]}


def _quantiles(a: np.ndarray) -> dict[str, float]:
    q = np.quantile(a, [0.0, 0.05, 0.5, 0.95, 1.0]) if len(a) else np.zeros(5)
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(x) for x in q), strict=True))


def card(cfg: Config, pixels: Pixels | None = None) -> dict[str, Any]:
    """Everything the card shows, as data (`ccr data --json`); raises the first problem (DataError, ...).
    `pixels`: as for `load_dataset` (the model's preprocessing: `ccr.models.pixels_for`)."""
    from ccr.data import checked_order, load_dataset
    from ccr.io.redact import redact_tree
    from ccr.io.staging import DATA_LOCATIONS, MARKER, is_remote, partials, staged_of
    from ccr.io.storage import cache_root

    ds = load_dataset(cfg, pixels)
    order = checked_order(cfg, ds)
    per = []
    for t in ds.task_names:
        row: dict[str, Any] = {"task": t, "in sequence": t in order,
                               "role": ("sequence" if t in order else "pretraining" if t in cfg.tasks.pretrain
                                        else "control" if t in cfg.eval.control else "not used")}
        for split in ("train", "val", "test"):
            row[f"{split} images"] = int(len(ds.image_ids(t, split)))
            row[f"{split} captions"] = int(len(ds.caption_ids(t, split)))
        per.append(row)
    counts = ds.caption_counts()
    words = np.array([len(c.split()) for c in ds.captions])
    out: dict[str, Any] = {
        "name": ds.name, "kind": cfg.data.kind, "images": ds.n_images, "captions": len(ds.captions),
        "tasks": per, "order": order,
        "captions per image": {**_quantiles(counts), "mean": float(counts.mean()) if len(counts) else 0.0},
        "caption words": _quantiles(words),
        "left out": {k: v for k, v in (ds.info.get("left_out") or {}).items() if v},
    }
    src = ds.sources or {}
    if src.get("kind") == "image_files":
        out["image sizes"] = image_sizes(src["paths"])
        out["pixels"] = src.get("pixels")
    elif src.get("kind") == "features":
        out["features"] = {"files": src["files"], "dims": int(ds.images.load(np.array([0])).shape[-1])}
    if cfg.data.kind != "generated":
        root = cache_root(cfg.data.cache_dir)
        out["staged"] = {k: {"uri": s.shown, "local": str(s.local), "files": s.files, "bytes": s.bytes,
                             "copied": (s.folder / MARKER).is_file()}
                         for k, s in staged_of(cfg.data).items()}
        out["local inputs"] = {k: v for k in DATA_LOCATIONS if (v := getattr(cfg.data, k)) and not is_remote(v)}
        caches = {"datasets": sorted(str(p) for p in (root / "datasets").glob(f"{cfg.data.kind}-*.json")),
                  "image caches": sorted(str(p) for p in (root / "images").glob("*.npy")),
                  "cache root": str(root)}
        if cfg.data.image_cache == "shared":
            caches["shared image cache"] = cfg.data.shared_cache or "the sweep's (or run's) storage, cache/images/"
        out["caches"] = caches
        out["left by killed stagings"] = [str(p) for p in partials(cfg.data.cache_dir)]
    return redact_tree(out)  # URIs as shown, never with their credentials


def _n(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def render(c: dict[str, Any]) -> str:
    """The card as text for a terminal."""
    lines = [f"{c['name']} ({c['kind']}): {c['images']} images, {c['captions']} captions, "
             f"{len(c['tasks'])} tasks", f"task order: {' > '.join(c['order'])}", ""]
    head = ["task", "role", "train img", "train cap", "val img", "val cap", "test img", "test cap"]
    rows = [[t["task"], t["role"], *(str(t[f"{s} {w}"]) for s in ("train", "val", "test")
                                     for w in ("images", "captions"))] for t in c["tasks"]]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths,
                                                                                                strict=True))))
    q = c["captions per image"]
    lines += ["", f"captions per image: min {_n(q['min'])}, median {_n(q['median'])}, max {_n(q['max'])} "
                  f"(mean {q['mean']:.2f})"]
    w = c["caption words"]
    lines.append(f"caption length (words): p5 {_n(w['p5'])}, median {_n(w['median'])}, p95 {_n(w['p95'])}, "
                 f"max {_n(w['max'])}")
    if "image sizes" in c:
        s = c["image sizes"]
        sample = "" if s["read"] == s["of"] else f" (an even sample of {s['read']} of {s['of']})"
        if not s["read"]:
            lines.append("image sizes: not read (the image files are not on this node: their pixels come from the "
                         "shared image cache)")
        else:
            w, h = s["width"], s["height"]
            lines.append(f"image sizes{sample}: width {_n(w['min'])}-{_n(w['max'])} (median {_n(w['median'])}), "
                         f"height {_n(h['min'])}-{_n(h['max'])} (median {_n(h['median'])}); most common "
                         f"{', '.join(s['most_common'])}")
    if "features" in c:
        lines.append(f"precomputed features: {c['features']['dims']} dimensions")
    left = c["left out"]
    lines.append("left out: " + (", ".join(f"{n} {why}" for why, n in left.items()) if left else "nothing"))
    for key, s in (c.get("staged") or {}).items():
        where = f"staged at {s['local']}" if s.get("copied", True) else "listed, not copied (shared image cache)"
        lines.append(f"data.{key}: {s['uri']} -> {where} ({s['files']} files, {s['bytes'] / 1e6:.1f} MB)")
    for key, v in (c.get("local inputs") or {}).items():
        lines.append(f"data.{key}: {v} (local)")
    caches = c.get("caches")
    if caches:
        lines.append(f"caches under {caches['cache root']}: {len(caches['datasets'])} validated dataset(s), "
                     f"{len(caches['image caches'])} decoded-image cache(s)")
        if "shared image cache" in caches:
            lines.append(f"shared image cache: {caches['shared image cache']}")
    if c.get("left by killed stagings"):
        lines.append(f"left by killed stagings (never read; removed by the next staging): "
                     f"{', '.join(c['left by killed stagings'])}")
    return "\n".join(lines)

