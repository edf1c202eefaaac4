"""Builds a small dataset in Karpathy format (odd sizes and modes on purpose) for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = {"animal": ["dog", "cat"], "vehicle": ["car", "bus"]}
MODES = ["RGB", "L", "RGBA", "P"]


def make_karpathy(root: Path, per_task: int = 12, test_per_task: int = 4,
                  shapes: dict[str, list[str]] | None = None) -> dict[str, Path]:
    shapes = shapes or SHAPES
    rng = np.random.default_rng(0)
    img_dir = root / "images"
    (img_dir / "sub").mkdir(parents=True, exist_ok=True)
    entries, tasks = [], {}
    k = 0
    for task, words in shapes.items():
        for j in range(per_task):
            word = words[j % 2]
            w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            im = Image.fromarray(arr).convert(MODES[k % len(MODES)])
            fn = f"img_{k:03d}.{'png' if k % 2 else 'jpg'}"
            if fn.endswith("jpg") and im.mode in ("RGBA", "P"):
                im = im.convert("RGB")
            im.save(img_dir / "sub" / fn)
            split = "test" if j < test_per_task else ("restval" if j % 3 == 0 else "train")
            entries.append({"filename": fn, "filepath": "sub", "split": split, "imgid": k,
                            "sentences": [{"raw": f"a {word} number {j}"}, {"raw": f"photo of a {word}"}]})
            tasks[fn] = task
            k += 1
    ds, tf = _write_split_and_tasks(root, "tiny", entries, tasks)
    # COCO-style instances: supercategory by the largest object
    cats = [{"id": c + 1, "name": words[0], "supercategory": task} for c, (task, words) in enumerate(shapes.items())]
    cat_of = {c["supercategory"]: c["id"] for c in cats}
    images = [{"id": i, "file_name": e["filename"]} for i, e in enumerate(entries)]
    anns = []
    for i, e in enumerate(entries):  # the largest object names the task; a smaller one of another category
        main = cat_of[tasks[e["filename"]]]
        anns.append({"id": 2 * i + 1, "image_id": i, "category_id": main, "area": 100.0})
        anns.append({"id": 2 * i + 2, "image_id": i, "category_id": main % len(cats) + 1, "area": 10.0})
    inst = root / "instances.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"path": ds, "images": img_dir, "tasks_file": tf, "instances": inst}


PHOTO_TASKS = {"animal": ["dog", "cat"], "vehicle": ["car", "bus"], "shape": ["circle", "square"],
               "mark": ["cross", "ring"]}


def _draw(draw, word: str, x: int, y: int, r: int, fill) -> None:
    box = (x - r, y - r, x + r, y + r)
    if word in ("dog", "circle"):
        draw.ellipse(box, fill=fill)
    elif word == "cat":
        draw.pieslice(box, 30, 330, fill=fill)
    elif word in ("car", "square"):
        draw.rectangle(box if word == "square" else (x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    elif word == "bus":
        draw.polygon([(x - r, y + r), (x, y - r), (x + r, y + r)], fill=fill)
    elif word == "cross":
        draw.rectangle((x - r, y - r // 4, x + r, y + r // 4), fill=fill)
        draw.rectangle((x - r // 4, y - r, x + r // 4, y + r), fill=fill)
    else:  # ring
        draw.ellipse(box, outline=fill, width=max(4, r // 4))


def make_photos(root: Path, per_task: int = 100, test_per_task: int = 20, size: tuple[int, int] = (640, 480),
                seed: int = 0, n_tasks: int = 2) -> dict[str, Path]:
    """A Karpathy-layout dataset of real-size JPEG photos (COCO's 640x480): a smooth background and one object
    whose shape and colour follow its caption, so that a model can learn something. Returns the same keys as
    `make_karpathy` (path, images, tasks_file)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    img_dir = root / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    colours = {"red": (200, 40, 40), "blue": (40, 60, 200)}
    w, h = size
    entries, tasks, k = [], {}, 0
    for task, words in list(PHOTO_TASKS.items())[:n_tasks]:
        for j in range(per_task):
            word, colour = words[j % 2], list(colours)[(j // 2) % 2]
            top = rng.integers(0, 255, 3)
            ramp = np.linspace(0, 1, h)[:, None, None]
            arr = (top * (1 - ramp) + rng.integers(0, 255, 3) * ramp).repeat(w, axis=1).astype(np.uint8)
            im = Image.fromarray(arr)
            draw = ImageDraw.Draw(im)
            x, y, r = int(rng.integers(100, w - 100)), int(rng.integers(100, h - 100)), int(rng.integers(40, 90))
            _draw(draw, word, x, y, r, colours[colour])
            fn = f"COCO_train2014_{k:012d}.jpg"
            im.save(img_dir / fn, quality=90)
            split = "test" if j < test_per_task else "train"
            entries.append({"filename": fn, "filepath": "train2014", "split": split, "imgid": k,
                            "sentences": [{"raw": f"a photo of a {colour} {word}"},
                                          {"raw": f"the {word} in {colour}"}]})
            tasks[fn] = task
            k += 1
    ds, tf = _write_split_and_tasks(root, "coco", entries, tasks)
    return {"path": ds, "images": root / "images", "tasks_file": tf}


def _write_split_and_tasks(root: Path, dataset: str, entries: list[dict], tasks: dict[str, str]) -> tuple[Path, Path]:
    """Karpathy's split file (dataset.json, or dataset_coco.json for 'coco') and the tasks file beside it."""
    ds = root / ("dataset_coco.json" if dataset == "coco" else "dataset.json")
    ds.write_text(json.dumps({"dataset": dataset, "images": entries}))
    tf = root / "tasks.json"
    tf.write_text(json.dumps(tasks))
    return ds, tf


def upload_karpathy(files: dict[str, Path], store) -> dict[str, str]:
    """A Karpathy-layout dataset's image folder, split file and tasks file into `store` (a ccr Storage), as `aws
    s3 sync` of its folder would put them: {data key: URI}."""
    store.upload_dir(files["images"], "images")
    for k in ("path", "tasks_file"):
        store.write_bytes(files[k].name, files[k].read_bytes())
    return {"path": store.child(files["path"].name).uri, "images": store.child("images").uri,
            "tasks_file": store.child(files["tasks_file"].name).uri}
