"""The input pipeline: images for a task's batches, decoded ahead of the training loop.

Which items make up each batch (the task's permutation, caption sampling, replay memory, each
rank's slice) is decided in the training process, from the run's seeds, before the task trains;
only decoding and resizing image files runs in `torch.utils.data.DataLoader` worker processes,
in order. So results do not depend on the number of loader workers (tests/test_pipeline.py).

The decoded-image cache (`data.image_cache`) decodes every image of a dataset once, at the
configured size, into one uint8 `.npy` file memory-mapped by every study that uses it: the trials
of a sweep on a node share the decoding and the page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ccr.errors import first_line
from ccr.io.storage import node_lock

log = logging.getLogger(__name__)


class _ImagesById(Dataset):
    """A map-style view of an image store that loads a whole batch per call (`__getitems__`)."""

    def __init__(self, store) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store.load(np.array([i], dtype=np.int64))[0]

    def __getitems__(self, ids: list[int]) -> torch.Tensor:
        return self.store.load(np.asarray(ids, dtype=np.int64))


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch  # the store already returns one (B, ...) tensor per batch


def prefetched(store, plan: Sequence[np.ndarray], workers: int = 0, prefetch_factor: int = 2,
               pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """`store.load(ids)` for every `ids` of `plan`, in order. With `workers` > 0 and a store that decodes
    files, `workers` processes decode up to `workers * prefetch_factor` batches ahead."""
    if workers <= 0 or not getattr(store, "decodes", False) or not plan:
        for ids in plan:
            yield store.load(ids)
        return
    loader = DataLoader(_ImagesById(store), batch_sampler=[[int(i) for i in ids] for ids in plan],
                        num_workers=workers, collate_fn=_as_is, prefetch_factor=prefetch_factor,
                        pin_memory=pin_memory)
    yield from loader


# ---- the decoded-image cache -----------------------------------------------------------------------
class MemmapImages:
    """Decoded images in a uint8 (N, 3, S, S) `.npy` file, memory-mapped read-only."""

    decodes = False

    def __init__(self, path: str | Path, shape: tuple[int, ...] | None = None):
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r")
        if self.array.dtype != np.uint8 or self.array.ndim != 4 or self.array.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W), found {self.array.dtype} {self.array.shape}")
        if shape is not None and tuple(self.array.shape) != tuple(shape):  # another dataset's, or another size
            raise ValueError(f"expected {shape[0]} images of {shape[2]}x{shape[3]} px, found {self.array.shape[0]} "
                             f"of {self.array.shape[2]}x{self.array.shape[3]}")
        self.image_size = int(self.array.shape[-1])

    def __len__(self) -> int:
        return len(self.array)

    def load(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.array[np.asarray(ids, dtype=np.int64)])  # fancy indexing copies

    def __getstate__(self) -> dict:  # to a worker or an actor: the path, not the pages
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def cache_key(paths: Sequence[Path], pixels) -> str:
    """The images' identity: every path with its size and modification time, and the preprocessing that
    decodes them (a `ccr.io.images.Pixels`: size, resize mode, crop, resampling)."""
    from ccr.io.images import Pixels

    p = Pixels.square(pixels) if isinstance(pixels, int) else pixels
    h = hashlib.sha256(f"ccr-images-v2 {json.dumps(p.describe(), sort_keys=True)}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def shared_key(paths: Sequence[Path], pixels, root: Path, sizes: dict[str, int] | None = None) -> str:
    """The images' identity on every node: their names under the image root and sizes, what the root was
    staged from (ccr.io.staging: the same listing on every node) or, for a shared mount, every file's mtime.
    `sizes`: {name: size} from the storage's listing, for images not copied to this node."""
    from ccr.io.staging import identity

    staged = identity(root)
    h = hashlib.sha256(f"ccr-images-v2 shared {json.dumps(pixels.describe(), sort_keys=True)} {staged}\n".encode())
    for p in paths:
        rel = os.path.relpath(p, root)
        if sizes is not None and staged:
            h.update(f"{rel}\t{sizes[rel]}\t\n".encode())
            continue
        st = os.stat(p)
        h.update(f"{rel}\t{st.st_size}\t{'' if staged else st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def cached_images(files, cache_dir: Path, workers: int = 0, shared=None,
                  root: Path | None = None, sizes: dict[str, int] | None = None) -> MemmapImages:
    """`files` (a FileImages) decoded once into `cache_dir/images/<key>.npy`, then memory-mapped.

    The file is written under a temporary name and renamed when complete, so a killed build leaves
    nothing that a later study would read; concurrent studies on one node build it once (a file lock).
    Building it is also the decode check (an unreadable image is a DataError naming it). With `shared` (a
    Storage: data.image_cache=shared), the first node to need it builds it and uploads it there; every other
    node downloads it instead of decoding (and, for images in storage, never copies them: `sizes`, their listing).
    """
    from ccr.io.staging import materialize

    if shared is not None:
        key = "shared-" + shared_key(files.paths, files.pixels, root or Path("."), sizes)
    else:
        key = cache_key(files.paths, files.pixels)
    target = Path(cache_dir) / "images" / f"{key}.npy"
    shape = (len(files.paths), 3, *files.pixels.shape)
    with node_lock(target.with_suffix(".lock")):
        for old in target.parent.glob(f".{target.name}.*.tmp"):  # builds killed before they renamed
            log.info("removing %s, left by a killed cache build", old)
            old.unlink(missing_ok=True)
        if target.is_file():
            try:
                return MemmapImages(target, shape)
            except (OSError, ValueError) as e:  # truncated or overwritten: never trusted, rebuilt
                log.warning("image cache %s is unreadable (%s); decoding the images again", target, e)
                target.unlink()
        if shared is not None and _download(shared, f"images/{key}.npy", target, cache_dir, shape):
            return MemmapImages(target, shape)
        if root is not None:
            materialize(root)  # the images, from storage, to decode them here
        _build(files, target, workers, cache_dir)
        if shared is not None:
            _upload(target, shared, f"images/{key}.npy", cache_dir)
    return MemmapImages(target, shape)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _marker(shared, rel: str) -> dict | None:
    """The `.done` marker of a shared cache object: {"bytes", "sha256", "shape"}; None when there is none, or it
    is of an older ccr (no digest: the object cannot be checked, so it is decoded again and replaced)."""
    done = rel.removesuffix(".npy") + ".done"
    if not shared.is_file(done):  # the first node to need it: nothing to say
        return None
    try:
        m = json.loads(shared.read_text(done))
    except (ValueError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) and {"bytes", "sha256", "shape"} <= set(m) else None


def _download(shared, rel: str, target: Path, cache_dir: Path, shape: tuple[int, ...]) -> bool:
    """The shared cache object to `target` when its marker says it is whole and it is what its marker says (size,
    content digest) and what this dataset needs (rows, image size). Anything else (no marker, a marker without
    its object, a replaced or truncated object, storage that cannot be reached) is a warning and False: the
    images are decoded here, and a good cache replaces the bad one in storage."""
    import time

    from ccr.io.staging import copy_file, event

    started = time.time()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        marker = _marker(shared, rel)
        if marker is None:
            return False
        log.info("downloading the shared image cache %s", shared.display(rel))
        copy_file(shared, rel, tmp)
        size, digest = tmp.stat().st_size, file_digest(tmp)
        if size != marker["bytes"] or digest != marker["sha256"]:
            raise ValueError(f"it is not what was uploaded ({size} bytes, sha256 {digest[:12]}; its marker says "
                             f"{marker['bytes']} bytes, sha256 {str(marker['sha256'])[:12]})")
        MemmapImages(tmp, shape)  # what this dataset needs
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - a bad or unreachable shared cache is decoded again, never trusted
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        log.warning("shared image cache %s cannot be used (%s); decoding the images here", shared.display(rel),
                    first_line(e) or type(e).__name__)
        return False
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    event(cache_dir, "downloaded", what="image cache", uri=shared.display(rel), bytes=target.stat().st_size,
          seconds=round(time.time() - started, 3))
    return True


def _upload(target: Path, shared, rel: str, cache_dir: Path) -> None:
    """The cache file, then its `.done` marker with its size, digest and shape: a node that sees the marker
    downloads a whole file, and can tell it from any other. Storage that cannot take it is a warning (other nodes
    decode for themselves)."""
    import time

    from ccr.io.staging import event, put_file

    started = time.time()
    shape = list(np.load(target, mmap_mode="r").shape)
    try:
        put_file(target, shared, rel)
        shared.write_text(rel.removesuffix(".npy") + ".done", json.dumps(
            {"bytes": target.stat().st_size, "sha256": file_digest(target), "shape": shape}) + "\n")
    except Exception as e:  # noqa: BLE001
        log.warning("cannot upload the image cache to %s (%s); other nodes will decode the images themselves",
                    shared.display(rel), first_line(e) or type(e).__name__)
        return
    event(cache_dir, "uploaded", what="image cache", uri=shared.display(rel), bytes=target.stat().st_size,
          seconds=round(time.time() - started, 3))


def _build(files, target: Path, workers: int, cache_dir: Path | None = None) -> None:
    """Decode every image (the decode check too) into a temporary file, then rename it into place."""
    import time

    from ccr.data.dataset import decode_checked
    from ccr.io.staging import event

    n, (h, w) = len(files.paths), files.pixels.shape
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    log.info("decoding %d images once at %dx%d px into %s (%.1f GB)", n, h, w, target, n * 3 * h * w / 1e9)
    started = time.time()
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, h, w))
    try:
        decode_checked(files.paths, files.pixels, out, max(workers, os.cpu_count() or 1, 4))
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    event(cache_dir, "decoded", images=n, into="cache", seconds=round(time.time() - started, 3))
