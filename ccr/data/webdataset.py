"""Distractors: gallery entries of no task, read from WebDataset tar shards (the layout img2dataset writes: each
sample `KEY.jpg|jpeg|png|webp` + `KEY.txt`, its caption, and an optional `KEY.json`), in a folder or under a URI.

The shards are scanned once, as a stream (one sequential read per shard, nothing staged): the scan checks each
sample and records where its image lies inside its shard (offset and size) and its caption. The scan is kept per
node (`cache_dir/distractors/`, keyed by the shards' names, sizes and modification times): the driver scans, and
the Ray Train ranks, a resumed study and `ccr calibrate` on that node read what it found. The images themselves
are read later, a few at a time, by ranged reads of those bytes (`WebDatasetImages`): no process ever holds the
set's images, and a gallery shard holds only the rows of its own items (`WebDatasetImages.subset`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ccr.errors import DataError, StorageError
from ccr.io.images import Pixels
from ccr.io.storage import Storage, cache_root, cache_write, node_lock

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
DISTRACTORS = "(distractors)"  # their task name in a dataset: no task of any loader can be named so
SPLIT = "distractor"  # and their split: never train, val or test


def shard_listing(store: Storage) -> list[tuple[str, int, float]]:
    """(name, size, modification time) of the .tar files under `store`, in order (names sort as img2dataset
    numbers them)."""
    try:
        names = [(n, size, mtime) for n, size, mtime in store.listing() if n.endswith(".tar")]
    except StorageError as e:  # says which store it could not list, and why
        raise DataError(f"eval.distractors: {e}") from e
    except OSError as e:
        raise DataError(f"eval.distractors: cannot list {store.display()}: {e}") from e
    if not names:
        raise DataError(f"eval.distractors: no .tar shards under {store.display()} (expected WebDataset shards: "
                        "KEY.jpg + KEY.txt per sample)")
    return names


def _split_key(name: str) -> tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', '.jpg'): WebDataset's key is the name up to the first dot of its base."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot:].lower())


@dataclass
class ShardIndex:
    """Where every distractor's image lies and what its caption says (sample i = distractor i, in shard order)."""

    uri: str  # the folder or prefix of the shards
    shards: list[str]  # their names relative to it
    shard: np.ndarray  # (n,) int32: each sample's shard
    offset: np.ndarray  # (n,) int64: its image's first byte in that shard
    size: np.ndarray  # (n,) int64: and its length
    keys: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.keys)


SCAN_FORMAT = 1


def scan_shards(location: str, limit: int = 0, cache_dir: str | None = None) -> ShardIndex:
    """The shards under `location` (the first `limit` samples when > 0), scanned once per node and content: read
    back from `cache_dir/distractors/` where this node scanned the same shards (names, sizes, modification times)
    before, else read in order, each sample checked (a tar file, an image and a caption per key: one DataError
    naming the shard and key otherwise), and kept there. One process per node scans; the others wait and read."""
    store = Storage(location)
    listing = shard_listing(store)
    key = hashlib.sha256(json.dumps({"format": SCAN_FORMAT, "uri": store.uri, "limit": limit, "shards": listing})
                         .encode()).hexdigest()[:24]
    cached = cache_root(cache_dir) / "distractors" / f"scan-{key}.parquet"
    index = _read_scan(cached, store.uri)
    if index is not None:
        return index
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # a cache that cannot be written: every process scans
            stack.enter_context(node_lock(cached.with_name(cached.name + ".lock")))
            index = _read_scan(cached, store.uri)  # scanned by the process this one waited for
        if index is None:
            index = _scan(store, [n for n, _, _ in listing], limit)
            _write_scan(cached, index)
    return index


def _scan(store: Storage, names: list[str], limit: int) -> ShardIndex:
    shard, offset, size, keys, captions = [], [], [], [], []
    for s, name in enumerate(names):
        for key, off, n, caption in _samples(store, name):
            shard.append(s)
            offset.append(off)
            size.append(n)
            keys.append(key)
            captions.append(caption)
            if limit and len(keys) == limit:
                break
        if limit and len(keys) == limit:
            break
    if limit and len(keys) < limit:
        raise DataError(f"eval.distractors_limit={limit}, but the {len(names)} shard(s) under {store.display()} "
                        f"hold {len(keys)} samples")
    return ShardIndex(store.uri, names[: (shard[-1] + 1) if shard else 0], np.asarray(shard, np.int32),
                      np.asarray(offset, np.int64), np.asarray(size, np.int64), keys, captions)


def _write_scan(path: Path, index: ShardIndex) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"shard": index.shard, "offset": index.offset, "size": index.size, "key": index.keys,
                      "caption": index.captions},
                     metadata={"ccr": json.dumps({"shards": index.shards})})  # not the URI: it may hold credentials
    cache_write(path, lambda tmp: pq.write_table(table, tmp))


def _read_scan(path: Path, uri: str) -> ShardIndex | None:
    """A scan this node kept, or None (none, or one that cannot be read: the shards are scanned again)."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        about = json.loads(table.schema.metadata[b"ccr"])
        index = ShardIndex(uri, list(about["shards"]), table["shard"].to_numpy().astype(np.int32),
                           table["offset"].to_numpy().astype(np.int64), table["size"].to_numpy().astype(np.int64),
                           table["key"].to_pylist(), table["caption"].to_pylist())
    except (OSError, ValueError, KeyError, TypeError) as e:  # damaged, or of another shape
        log.warning("ignoring the distractor scan %s (%s: %s); scanning the shards again", path, type(e).__name__, e)
        return None
    log.info("distractors: %d samples of %d shard(s), as this node scanned them before (%s)", len(index),
             len(index.shards), path.name)
    return index


def _samples(store: Storage, name: str):
    """(key, image offset, image size, caption) of each sample of one shard, read as one stream."""
    where = store.display(name)
    try:
        stream = open(store.local_path / name, "rb") if store.local_path else store.filesystem.open_input_stream(
            store.fs_path(name))
    except OSError as e:
        raise DataError(f"eval.distractors: cannot read shard {where}: {e}") from e
    current: dict | None = None

    def done(sample: dict):
        if "image" not in sample:
            raise DataError(f"eval.distractors: sample {sample['key']!r} of shard {where} has no image "
                            f"({'/'.join(IMAGE_EXTS)})")
        if "caption" not in sample:
            raise DataError(f"eval.distractors: sample {sample['key']!r} of shard {where} has no caption (.txt)")
        return sample["key"], *sample["image"], sample["caption"]

    try:
        with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if current is None or key != current["key"]:
                    if current is not None:
                        yield done(current)
                    current = {"key": key}
                if ext in IMAGE_EXTS:
                    current["image"] = (member.offset_data, member.size)
                elif ext == ".txt":
                    current["caption"] = tar.extractfile(member).read().decode("utf-8", "replace").strip()
    except tarfile.TarError as e:
        raise DataError(f"eval.distractors: shard {where} is not a readable tar file ({e})") from e
    if current is not None:
        yield done(current)


class WebDatasetImages:
    """Images of shard samples by row, read by ranged reads and decoded on demand (an ImageStore)."""

    decodes = True

    def __init__(self, uri: str, shards: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 keys: list[str], pixels: Pixels):
        self.uri, self.shards, self.shard, self.offset, self.size = uri, shards, shard, offset, size
        self.keys, self.pixels = keys, pixels
        self.image_size = pixels.shape[0]
        self._store: Storage | None = None

    @classmethod
    def of(cls, index: ShardIndex, pixels: Pixels) -> WebDatasetImages:
        return cls(index.uri, index.shards, index.shard, index.offset, index.size, index.keys, pixels)

    def __getstate__(self) -> dict:  # file handles do not travel to loader workers or actors
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows: np.ndarray) -> WebDatasetImages:
        """Only these rows (a gallery shard's own items), renumbered 0..len(rows)-1."""
        rows = np.asarray(rows, np.int64)
        return WebDatasetImages(self.uri, self.shards, self.shard[rows], self.offset[rows], self.size[rows],
                                [self.keys[i] for i in rows], self.pixels)

    def _read(self, shard: int, off: int, n: int, key: str) -> bytes:
        """One sample's image file, as stored in its shard."""
        if self._store is None:
            self._store = Storage(self.uri)
        store, name = self._store, self.shards[shard]
        try:
            if store.local_path is not None:
                with open(store.local_path / name, "rb") as f:
                    f.seek(off)
                    data = f.read(n)
            else:
                with store.filesystem.open_input_file(store.fs_path(name)) as f:
                    data = f.read_at(n, off)
        except OSError as e:
            raise DataError(f"eval.distractors: cannot read shard {store.display(name)}: {e}") from e
        if len(data) != n:
            raise DataError(f"eval.distractors: shard {store.display(name)} changed since it was scanned "
                            f"(sample {key!r})")
        return data

    def rows_of(self, shard: np.ndarray, offset: np.ndarray, size: np.ndarray, keys) -> torch.Tensor:
        """Pixels (n, 3, H, W) of samples given by where they lie (shard, offset, size) and their keys."""
        from PIL import Image

        out = np.empty((len(shard), 3, *self.pixels.shape), np.uint8)
        for j, (s, off, n, key) in enumerate(zip(shard, offset, size, keys, strict=True)):
            data = self._read(int(s), int(off), int(n), str(key))
            try:
                with Image.open(io.BytesIO(data)) as im:
                    out[j] = self.pixels.apply(im)
            except Exception as e:  # noqa: BLE001 - any decoding failure names the sample
                raise DataError(f"eval.distractors: the image of sample {str(key)!r} in shard "
                                f"{Storage(self.uri).display(self.shards[int(s)])} cannot be decoded "
                                f"({type(e).__name__}: {str(e)[:80]})") from e
        return torch.from_numpy(out)

    def load(self, ids: np.ndarray) -> torch.Tensor:
        ids = np.asarray(ids, np.int64)
        return self.rows_of(self.shard[ids], self.offset[ids], self.size[ids], [self.keys[i] for i in ids])


def with_distractors(ds, location: str, limit: int, pixels: Pixels, cache_dir: str | None = None):
    """`ds` with the distractors under `location` appended: images N.., captions M.. (caption i of distractor
    image i), in the task DISTRACTORS and the split SPLIT, so no task, training or query ever selects them."""
    import dataclasses

    from ccr.data.dataset import ConcatImages

    if getattr(ds.images, "feature_dim", None):
        raise DataError("eval.distractors: this dataset gives precomputed image features (data.kind=precomp); "
                        "distractors are images, and one model takes one kind of input")
    index = scan_shards(location, limit, cache_dir)
    n, n_img = len(index), ds.n_images
    labels = ds.class_labels
    return dataclasses.replace(
        ds, image_names=[*ds.image_names, *(f"{DISTRACTORS}/{k}" for k in index.keys)],
        image_split=np.concatenate([ds.image_split, np.full(n, SPLIT)]),
        image_task=np.concatenate([ds.image_task, np.full(n, DISTRACTORS)]),
        captions=[*ds.captions, *index.captions],
        caption_image=np.concatenate([ds.caption_image, n_img + np.arange(n, dtype=np.int64)]),
        images=ConcatImages([ds.images, WebDatasetImages.of(index, pixels)]),
        class_labels=None if labels is None else np.concatenate([labels, np.full(n, -1, labels.dtype)]),
        info={**ds.info, "distractors": {"samples": n, "shards": len(index.shards)}})
