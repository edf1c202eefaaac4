"""Index snapshots: each shard's galleries (ids, embeddings, versions) saved after a step, with a
manifest of checksums, so a shard can be rebuilt exactly. A corrupt or mismatched snapshot is a
SnapshotError, never a silently wrong answer."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ccr.io.storage import Storage

FORMAT = 1


class SnapshotError(RuntimeError):
    """A snapshot that is missing, corrupt, or does not match the index it should restore."""


def _key(modality: str, task: str, field: str) -> str:
    return f"{modality}|{task}|{field}"


def encode(galleries: dict[str, dict[str, dict[str, np.ndarray]]]) -> bytes:
    """{modality: {task: {ids, emb, version}}} -> npz bytes."""
    arrays = {_key(m, t, f): np.asarray(v) for m, parts in galleries.items() for t, p in parts.items()
              for f, v in p.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(data: bytes) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        for key in z.files:
            m, t, f = key.split("|")
            out.setdefault(m, {}).setdefault(t, {})[f] = z[key]
    return out


Folder = str | Path | Storage  # a path or URI: shards on any node write and read through storage


def write_shard(folder: Folder, shard: int, galleries: dict[str, Any]) -> str:
    """Write one shard's file atomically; returns its sha256 (for the manifest)."""
    data = encode(galleries)
    Storage(folder).write_bytes(f"shard_{shard:03d}.npz", data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(folder: Folder, n_shards: int, dim: int, step: int, digests: list[str],
                   extra: dict[str, Any] | None = None) -> None:
    Storage(folder).write_json("manifest.json", {"format": FORMAT, "n_shards": n_shards, "dim": dim,
                                                 "step": step, "sha256": digests, **(extra or {})})


def read_manifest(folder: Folder, n_shards: int | None = None, dim: int | None = None) -> dict[str, Any]:
    store = Storage(folder)
    folder = store.display()
    if not store.is_file("manifest.json"):
        raise SnapshotError(f"snapshot {folder}: no manifest.json")
    try:
        man = json.loads(store.read_text("manifest.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"snapshot {folder}: manifest.json is corrupt ({e})") from e
    if man.get("format") != FORMAT:
        raise SnapshotError(f"snapshot {folder}: format {man.get('format')}, expected {FORMAT}")
    if n_shards is not None and man["n_shards"] != n_shards:
        raise SnapshotError(f"snapshot {folder} has {man['n_shards']} shards; this index has {n_shards}")
    if dim is not None and man["dim"] != dim:
        raise SnapshotError(f"snapshot {folder} holds {man['dim']}-d embeddings; this model makes {dim}-d ones")
    return man


def read_shard(folder: Folder, shard: int, manifest: dict[str, Any]) -> dict[str, Any]:
    store = Storage(folder)
    folder, path = store.display(), Path(f"shard_{shard:03d}.npz")
    if not store.is_file(path.name):
        raise SnapshotError(f"snapshot {folder}: {path.name} is missing")
    data = store.read_bytes(path.name)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"][shard]:
        raise SnapshotError(f"snapshot {folder}: {path.name} does not match its checksum (corrupt or replaced)")
    try:
        galleries = decode(data)
    except Exception as e:  # noqa: BLE001
        raise SnapshotError(f"snapshot {folder}: {path.name} cannot be read ({e})") from e
    for m, parts in galleries.items():
        for t, p in parts.items():
            if set(p) != {"ids", "emb", "version"} or p["emb"].shape != (len(p["ids"]), manifest["dim"]):
                raise SnapshotError(f"snapshot {folder}: {path.name} has a malformed entry {m}/{t}")
    return galleries
