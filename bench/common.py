"""Shared helpers for benchmarks: synthetic data at any size, model presets, timing."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1, not the network address

from ccr.data.dataset import ArrayImages, RetrievalDataset  # noqa: E402
from ccr.models import TokenizedCaptions  # noqa: E402
from ccr.study.configure import load_config  # noqa: E402

PRESETS = {
    # the embedded default's model
    "tiny": [],
    # ViT-B/16 at 224 + BERT-base (random init), the size of the DESIGN anchors' encoders
    "base": ["model.image.image_size=224", "model.image.patch_size=16", "model.image.hidden_size=768",
             "model.image.layers=12", "model.image.heads=12", "model.image.intermediate_size=3072",
             "model.text.hidden_size=768", "model.text.layers=12", "model.text.heads=12",
             "model.text.intermediate_size=3072", "model.text.max_length=32", "model.embed_dim=512",
             "model.image.pool=cls", "model.text.pool=cls"],
}
VOCAB = 1000


def preset_config(name: str, *extra: str):
    return load_config(None, [*PRESETS[name], *extra])


def synthetic_dataset(tasks: dict[str, int], image_size: int, caption_len: int, seed: int = 0
                      ) -> tuple[RetrievalDataset, TokenizedCaptions]:
    """Random uint8 images and random token captions (one per image), all in the train split."""
    rng = np.random.default_rng(seed)
    n = sum(tasks.values())
    images = rng.integers(0, 256, size=(n, 3, image_size, image_size), dtype=np.uint8)
    task = np.concatenate([[t] * c for t, c in tasks.items()])
    ds = RetrievalDataset("synthetic", [f"{i}.png" for i in range(n)], np.array(["train"] * n), task,
                          [f"c{i}" for i in range(n)], np.arange(n), ArrayImages(images), list(tasks))
    ids = torch.from_numpy(rng.integers(4, VOCAB, size=(n, caption_len)))
    return ds, TokenizedCaptions(ids, torch.ones_like(ids))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) random unit vectors, float32."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` wall-clock timings of fn() (CPU work; GPU callers synchronise inside)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
