"""How an image file becomes the uint8 pixels a model reads: resize, crop, resample.

The geometric part of preprocessing happens where images are decoded (the loader, DataLoader
workers, the decoded-image cache, shard actors); the arithmetic part (rescale, mean/std) happens in
the model on the device, so pipelines move uint8. A complete pretrained model (CLIP, SigLIP) brings
its own `preprocessor_config.json`; `Pixels.from_processor_config` reads it with the rules of
transformers' PIL backend, so ccr's pixels are the ones the model was trained on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BICUBIC = 3  # PIL's code for bicubic resampling (transformers' PILImageResampling uses the same codes)


@dataclass(frozen=True)
class Pixels:
    """Resize (shorter side to `size`, or to exactly `height` x `width`), then centre crop to `crop`
    (height, width) or not; `resample` is a PIL resampling code. Output: uint8 (3, H, W)."""

    mode: str = "shortest_edge"  # shortest_edge | exact
    size: int = 32  # shortest_edge: the shorter side after resizing
    height: int = 0  # exact: the size after resizing
    width: int = 0
    crop: tuple[int, int] | None = (32, 32)
    resample: int = BICUBIC

    @property
    def side(self) -> int:
        """The height of what this makes (the crop's, else the resized size's): a square model input's side."""
        if self.crop is not None:
            return int(self.crop[0])
        return int(self.height if self.mode == "exact" else self.size)

    @classmethod
    def square(cls, size: int) -> Pixels:
        """ccr's own preprocessing at `size`: shorter side to `size`, bicubic, centre crop to a square."""
        return cls("shortest_edge", size, 0, 0, (size, size), BICUBIC)

    @classmethod
    def from_processor_config(cls, cfg: dict[str, Any], where: str = "preprocessor_config.json") -> Pixels:
        """The geometry of a transformers image processor's saved config (CLIP: shortest edge + crop;
        SigLIP: an exact size, no crop)."""
        size = cfg.get("size", {"shortest_edge": 224})
        if isinstance(size, int):  # older saved configs: an int is the shorter side (CLIP's 224)
            size = {"shortest_edge": size}
        if cfg.get("do_resize", True) is False:
            raise ValueError(f"{where}: do_resize is false; ccr needs images of one size (set a size)")
        crop = None
        if cfg.get("do_center_crop", False):
            c = cfg.get("crop_size", size)
            c = {"height": c, "width": c} if isinstance(c, int) else c
            if "height" not in c:
                c = {"height": c["shortest_edge"], "width": c["shortest_edge"]}
            crop = (int(c["height"]), int(c["width"]))
        resample = int(cfg.get("resample", BICUBIC))
        if "shortest_edge" in size:
            return cls("shortest_edge", int(size["shortest_edge"]), 0, 0, crop, resample)
        if "height" in size and "width" in size:
            return cls("exact", 0, int(size["height"]), int(size["width"]), crop, resample)
        raise ValueError(f"{where}: size {size} is neither {{shortest_edge}} nor {{height, width}}")

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the output."""
        if self.crop is not None:
            return self.crop
        if self.mode == "exact":
            return (self.height, self.width)
        raise ValueError("a shortest-edge resize without a crop gives images of varying shape")

    def describe(self) -> dict[str, Any]:
        """A JSON-able identity, for cache keys and results."""
        d = asdict(self)
        d["crop"] = list(self.crop) if self.crop else None
        return d

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> Pixels:
        return cls(**{**d, "crop": tuple(d["crop"]) if d.get("crop") else None})

    def apply(self, im: Image.Image) -> np.ndarray:
        """A PIL image (any mode) -> uint8 (3, H, W), as transformers' PIL backend resizes and crops."""
        im = to_rgb(im)
        w, h = im.size
        if self.mode == "exact":
            nh, nw = self.height, self.width
        else:  # transformers' get_resize_output_image_size(default_to_square=False): the longer side truncated
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling(self.resample))
        if self.crop is not None:
            ch, cw = self.crop
            if ch > nh or cw > nw:
                raise ValueError(f"crop {self.crop} is larger than the resized image ({nh}, {nw})")
            top, left = (nh - ch) // 2, (nw - cw) // 2
            im = im.crop((left, top, left + cw, top + ch))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel. 16-bit and 32-bit integer images (16-bit grayscale PNGs, which PIL opens as
    I;16 or I) are scaled to 8 bits: `convert("RGB")` would clip every value above 255 to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if im.mode.startswith("I;16") or a.max() > 255 else a  # 65535 -> 255
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise ValueError("floating-point images (mode F) have no defined range; convert them to 8 or 16 bits")
    return im.convert("RGB")


def load_image_file(path: str | Path, pixels: Pixels | int) -> np.ndarray:
    """An image file -> uint8 (3, H, W) by `pixels` (an int: ccr's own square preprocessing at that size)."""
    p = Pixels.square(pixels) if isinstance(pixels, int) else pixels
    with Image.open(path) as im:
        return p.apply(im)


def _decode(path: Path, pixels: Pixels) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image_file(path, pixels), None
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return None, f"{path} ({type(e).__name__}: {str(e)[:80]})"


def decode_all(paths: list[Path], pixels: Pixels, out: np.ndarray, threads: int = 0, slice_size: int = 4096
               ) -> list[str]:
    """Decode every image into `out` (N, 3, H, W) on a thread pool (PIL decodes and resizes without the GIL),
    `slice_size` images at a time (the pool's pending results stay bounded); returns the unreadable files. This
    pass is also the decode check: nothing decodes the images twice."""
    threads = threads or max(4, os.cpu_count() or 1)
    bad: list[str] = []
    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(paths), slice_size):
            part = paths[lo:lo + slice_size]
            for i, (arr, err) in enumerate(pool.map(lambda p: _decode(p, pixels), part), start=lo):
                if err:
                    bad.append(err)
                else:
                    out[i] = arr
    return bad
