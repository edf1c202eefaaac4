"""Staging a dataset from an S3-compatible server, and the time to a node's first training step at COCO's size.

    python bench/staging_bench.py                 # 600 real-size JPEGs (640x480, ~150 KB) on a local S3 server

Measured in one run, against the same server (moto, started as its own process on 127.0.0.1):
- staging throughput: `ccr.io.staging.stage` of the image folder against pyarrow's plain `copy_files` of the same
  objects into an empty folder (the floor: what staging adds is a listing, a size check and a rename);
- decoding: images per second through `decode_all` at 224 px (the one pass that checks and makes pixels), on
  the threads this machine has;
- the shared image cache: download throughput of a decoded-image cache file.

From these rates it projects a node's time to its first training step for COCO (123,287 images, 19.3 GB of
JPEG, a decoded cache of 123,287 x 3 x 224 x 224 bytes = 18.6 GB): staging + decoding with `image_cache: node`,
downloading the cache with `image_cache: shared` (every node but the first, which stages, decodes and uploads;
the others never copy the JPEGs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COCO_IMAGES = 123_287
COCO_JPEG_BYTES = 19.3e9
CACHE_SIDE = 224


def _photo(rng: np.random.Generator, path: Path) -> None:
    """A 640x480 JPEG with texture, so that it compresses to COCO's typical size (~150 KB at quality 90)."""
    from PIL import Image

    base = rng.integers(0, 255, (60, 80, 3)).astype(np.uint8)
    arr = np.asarray(Image.fromarray(base).resize((640, 480), Image.BICUBIC)).astype(np.int16)
    arr = np.clip(arr + rng.normal(0, 18, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def _server(port: int) -> subprocess.Popen:
    from tests.s3server import CREDENTIALS

    os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3server", "--port", str(port), "--bucket", "bench"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # "s3 server on ...": serving
    return proc


def staging_rate(store, work: Path, n: int, total: int, repeats: int) -> float:
    """MB/s of ccr's stage against pyarrow's plain copy_files of the same objects (best of `repeats` each)."""
    import pyarrow.fs as pafs

    from ccr.io.staging import stage

    plain, ccr = [], []
    for r in range(repeats):  # alternate, keep the best of each: the server warms up in the first round
        dest = work / f"plain-{r}"
        dest.mkdir()  # copy_files does not make it
        t = time.perf_counter()
        pafs.copy_files(store.fs_path(), str(dest), source_filesystem=store.fs,
                        destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
        plain.append(time.perf_counter() - t)
        cache = work / f"cache-{r}"
        t = time.perf_counter()
        got = stage(store.uri, "data.images", cache)
        ccr.append(time.perf_counter() - t)
        assert got.files == n and got.bytes == total
        shutil.rmtree(dest)
        shutil.rmtree(cache)
    rate_plain, rate_ccr = total / min(plain) / 1e6, total / min(ccr) / 1e6
    print(f"staging: plain copy_files {rate_plain:.1f} MB/s, ccr stage {rate_ccr:.1f} MB/s: "
          f"{rate_ccr / rate_plain:.2f}x")
    return rate_ccr


def decode_rate(src: Path) -> tuple[float, np.ndarray]:
    """Images/s decoded into the cache's pixels, on every core; and the pixels."""
    from ccr.io.images import Pixels, decode_all

    paths = sorted(src.iterdir())
    out = np.empty((len(paths), 3, CACHE_SIDE, CACHE_SIDE), np.uint8)
    threads = os.cpu_count() or 1
    t = time.perf_counter()
    bad = decode_all(paths, Pixels.square(CACHE_SIDE), out, threads)
    rate = len(paths) / (time.perf_counter() - t)
    assert not bad
    print(f"decoding at {CACHE_SIDE} px: {rate:.0f} images/s on {threads} threads")
    return rate, out


def cache_rates(uri, work: Path, out: np.ndarray) -> tuple[float, float]:
    """MB/s of uploading and downloading ~200 MB of decoded pixels (a shared image cache)."""
    from ccr.io.staging import copy_file, put_file
    from ccr.io.storage import Storage

    blob = work / "cache.npy"
    np.save(blob, np.concatenate([out] * max(1, 200_000_000 // out.nbytes)))
    t = time.perf_counter()
    put_file(blob, Storage(uri("cache")), "images/x.npy")
    up = blob.stat().st_size / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    copy_file(Storage(uri("cache")), "images/x.npy", work / "back.npy")
    down = blob.stat().st_size / (time.perf_counter() - t) / 1e6
    print(f"shared cache: upload {up:.0f} MB/s, download {down:.0f} MB/s ({blob.stat().st_size / 1e6:.0f} MB)")
    return up, down


def project(rate_ccr: float, decode: float, upload_rate: float, dl_rate: float) -> None:
    """What these rates mean for COCO: the time to a node's first training step, per image-cache mode."""
    cache_bytes = COCO_IMAGES * 3 * CACHE_SIDE * CACHE_SIDE
    stage_s = COCO_JPEG_BYTES / (rate_ccr * 1e6)
    decode_s = COCO_IMAGES / decode
    download_s = cache_bytes / (dl_rate * 1e6)
    print(f"\nprojected for COCO ({COCO_IMAGES:,} images, {COCO_JPEG_BYTES / 1e9:.1f} GB JPEG; cache "
          f"{cache_bytes / 1e9:.1f} GB), at these rates:")
    print(f"  staging the images:             {stage_s / 60:6.1f} min")
    print(f"  image_cache node   (decode):    {decode_s / 60:6.1f} min -> first step after "
          f"{(stage_s + decode_s) / 60:.1f} min on every node")
    # with a shared cache a node that finds it downloads it and never copies the images (ccr.io.staging)
    print(f"  image_cache shared (download):  {download_s / 60:6.1f} min -> first step after "
          f"{download_s / 60:.1f} min on every node but the first, which stages, decodes and uploads "
          f"({(stage_s + decode_s) / 60:.1f} min, plus {cache_bytes / (upload_rate * 1e6) / 60:.1f} min "
          "of upload)")


def main() -> None:
    import pyarrow.fs as pafs

    from ccr.io.storage import Storage

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--port", type=int, default=9311)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    server = _server(a.port)
    work = Path(tempfile.mkdtemp(prefix="ccr-staging-bench-"))
    try:
        uri = lambda rel: f"s3://bench/{rel}?endpoint_override=127.0.0.1:{a.port}&scheme=http"  # noqa: E731
        src = work / "images"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(a.n):
            _photo(rng, src / f"COCO_train2014_{i:012d}.jpg")
        total = sum(f.stat().st_size for f in src.iterdir())
        store = Storage(uri("coco/images"))
        pafs.copy_files(str(src), store.fs_path(), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=store.fs, use_threads=True)
        print(f"{a.n} JPEGs, {total / 1e6:.1f} MB ({total / a.n / 1e3:.0f} KB each) on a local S3 server "
              f"(moto, its own process); pyarrow I/O threads: {__import__('pyarrow').io_thread_count()}")
        rate_ccr = staging_rate(store, work, a.n, total, a.repeats)
        decode, out = decode_rate(src)
        up, down = cache_rates(uri, work, out)
        project(rate_ccr, decode, up, down)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
