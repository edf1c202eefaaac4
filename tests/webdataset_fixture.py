"""WebDataset shards made by the tests, laid out as img2dataset writes them: per sample KEY.jpg|png + KEY.txt +
KEY.json, samples numbered across shards (00000.tar: 000000000.*, ...)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "green", "circle", "square", "small", "large", "a", "the", "on", "left", "right"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_files(i: int, size: int, rng: np.random.Generator, fmt: str = "png") -> dict[str, bytes]:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt.upper().replace(
        "JPG", "JPEG"))
    caption = " ".join(rng.choice(WORDS, 5))
    return {f"{i:09d}.{fmt}": buf.getvalue(), f"{i:09d}.txt": caption.encode(),
            f"{i:09d}.json": json.dumps({"key": f"{i:09d}", "caption": caption}).encode()}


def make_shards(root: Path, n: int, per_shard: int = 100, size: int = 16, seed: int = 0,
                drop: dict[int, str] | None = None) -> Path:
    """`n` samples in ceil(n / per_shard) shards under `root`; `drop`: {sample: extension} files left out."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s, lo in enumerate(range(0, n, per_shard)):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(lo, min(n, lo + per_shard)):
                for name, data in sample_files(i, size, rng, "jpg" if i % 2 else "png").items():
                    if not (drop and name.endswith(f".{drop.get(i, '-')}")):
                        _add(tar, name, data)
    return root
