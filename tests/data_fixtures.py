"""Small datasets in the real file layouts of precomputed features (VSE++/SCAN) and Visual Genome."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = {"animals": ["dog", "cat"], "vehicles": ["car", "bus"], "plants": ["tree", "flower"]}


def make_precomp(root: Path, per_task: dict[str, int] | None = None, dim: int = 24, regions: int = 0,
                 caps_per_image: int = 5) -> dict[str, Path]:
    """{split}_ims.npy (N x D, or N x R x D), {split}_caps.txt (k per image), and a tasks file.

    Each task's features come from its own centre, and its captions name its words, so that a model
    can learn to match them."""
    per_task = per_task or {"train": 24, "dev": 4, "test": 6}
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    centres = {t: rng.normal(size=dim) * 3 for t in TASKS}
    tasks: dict[str, list[str]] = {}
    for split, n in per_task.items():
        feats, caps, labels = [], [], []
        for t, words in TASKS.items():
            for j in range(n):
                word = words[j % 2]
                v = centres[t] + rng.normal(size=dim) + (2.0 if word == words[0] else -2.0)
                feats.append(np.stack([v + rng.normal(size=dim) * 0.1 for _ in range(regions)]) if regions else v)
                caps += [f"a {word} seen {k} times in {split} item {j}" for k in range(caps_per_image)]
                labels.append(t)
        np.save(root / f"{split}_ims.npy", np.asarray(feats, dtype=np.float32))
        (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        tasks[split] = labels
    tf = root / "tasks.json"
    tf.write_text(json.dumps(tasks))
    return {"path": root, "tasks_file": tf}


def make_visual_genome(root: Path, per_task: int = 12, unmapped: int = 2) -> dict[str, Path]:
    """image_data.json, region_descriptions.json, objects.json and {image_id}.jpg images (spread over the
    root, VG_100K/ and VG_100K_2/), a task map by object name, plus images that must be left out."""
    rng = np.random.default_rng(1)
    img_dir = root / "images"
    for sub in ("", "VG_100K", "VG_100K_2"):
        (img_dir / sub).mkdir(parents=True, exist_ok=True)
    image_data, regions, objects = [], [], []
    image_id = 100
    for t, words in [*TASKS.items(), ("unmapped", ["rock", "cloud"])]:
        for j in range(per_task if t != "unmapped" else unmapped):
            image_id += 7
            w, h = int(rng.integers(30, 80)), int(rng.integers(30, 80))
            sub = ("", "VG_100K", "VG_100K_2")[j % 3]
            Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(
                img_dir / sub / f"{image_id}.jpg")
            image_data.append({"image_id": image_id, "width": w, "height": h,
                               "url": f"https://example.invalid/{image_id}.jpg", "coco_id": None})
            main, other = words[j % 2], words[(j + 1) % 2]
            phrases = [f"a {main} in the picture", f"A {main.upper()} in the picture",  # duplicate, case-insensitive
                       f"the {main} near a {other} on the left side", "it",  # "it" is too short (min words)
                       f"{other} far away", f"small {main}", f"the {main} is here again"]
            regions.append({"id": image_id, "regions": [
                {"region_id": image_id * 10 + k, "image_id": image_id, "phrase": p, "x": 0, "y": 0, "width": 5,
                 "height": 5} for k, p in enumerate(phrases)]})
            names = [main, main, other]
            objects.append({"image_id": image_id, "objects": [
                {"object_id": image_id * 10 + k, "names": [n], "synsets": [f"{n}.n.01"], "x": 0, "y": 0, "w": 3,
                 "h": 3} for k, n in enumerate(names)]})
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    (root / "objects.json").write_text(json.dumps(objects))
    tmap = root / "task_map.json"
    tmap.write_text(json.dumps({w: t for t, ws in TASKS.items() for w in ws}))
    return {"path": root, "images": img_dir, "task_map": tmap}
