"""Pretrained weights: where a folder, storage URI or hub id is on this node, what it holds, and its identity.

Every process that builds a model (the driver, Ray Train workers, shard actors) resolves the same
`model.pretrained` / `model.image.pretrained` / `model.text.pretrained` here, so they all read one
local folder: a local path as it is, a storage URI (`s3://...`) staged once per node and content into
ccr's cache (`ccr.io.staging`: a file lock makes one process copy, a marker written last says it is whole), a hub id
through the Hugging Face cache where the network allows (offline: one line naming the id).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ccr.errors import ConfigError
from ccr.io.images import Pixels

# complete dual encoders ccr loads (config.json's model_type)
COMPLETE = ("clip", "siglip")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _staged(uri: str, what: str) -> Path:
    """A folder in storage, staged on this node (ccr.io.staging: once per node and content)."""
    from ccr.io.staging import stage

    got = stage(uri, what)
    if got.kind != "folder":
        raise ConfigError(f"{what}: {got.shown} is an object; give the prefix (folder) that holds config.json")
    return got.local


@lru_cache(maxsize=32)
def local_folder(spec: str, what: str = "model.pretrained") -> Path:
    """The local folder that holds `spec`'s files (see the module docstring)."""
    p = Path(spec.removeprefix("file://")).expanduser()
    if p.is_dir():
        return p.resolve()
    if "://" in spec:
        return _staged(spec, what)
    if p.exists():
        raise ConfigError(f"{what}: {spec} is a file; give the folder that holds config.json")
    if spec.startswith(("/", ".", "~")) or not HUB_ID.match(spec):
        raise ConfigError(f"{what}: folder not found: {spec}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, no access: one line
        raise ConfigError(f"{what}: {spec!r} is no local folder, and the hub id could not be fetched here "
                          f"({type(e).__name__}). Where there is a network: `hf download {spec} --local-dir DIR`, "
                          f"then set {what}=DIR (or a storage URI holding those files)") from e


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{what}: {path.parent} has no {path.name}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} is not a JSON object")
    return data


def folder_config(folder: Path, what: str) -> dict[str, Any]:
    """A pretrained folder's config.json; a missing or unreadable one is one ConfigError naming `what`."""
    return _read_json(folder / "config.json", what)


def model_type(folder: Path, what: str) -> str:
    return str(folder_config(folder, what).get("model_type", ""))


@dataclass(frozen=True)
class Complete:
    """What a complete dual encoder's folder says about itself."""

    folder: Path
    model_type: str  # clip | siglip
    embed_dim: int
    image_size: int  # the vision tower's input size (square)
    max_length: int  # the text tower's positions: captions are padded / truncated to it
    pixels: Pixels  # resize and crop, from preprocessor_config.json
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float  # pixel values are multiplied by this before mean/std (1/255)


@lru_cache(maxsize=32)
def describe(spec: str) -> Complete:
    """Read a complete CLIP / SigLIP folder's config and preprocessing; every problem is one ConfigError."""
    what = "model.pretrained"
    folder = local_folder(spec, what)
    cfg = _read_json(folder / "config.json", what)
    kind = cfg.get("model_type")
    if kind not in COMPLETE:
        raise ConfigError(f"{what}: {spec} is a {kind!r} model; complete dual encoders are {', '.join(COMPLETE)} "
                          "(for separate towers use model.image.pretrained and model.text.pretrained)")
    vis, txt = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    if kind == "clip":
        dim = int(cfg.get("projection_dim", 512))
    else:  # SigLIP: the vision head keeps the hidden size, the text head projects to it
        dim = int(vis.get("hidden_size", 768))
        tdim = int(txt.get("projection_size") or txt.get("hidden_size", 768))
        if tdim != dim:
            raise ConfigError(f"{what}: {spec}: image embeddings have {dim} dimensions, text ones {tdim}")
    pre = _read_json(folder / "preprocessor_config.json", what)
    try:
        pixels = Pixels.from_processor_config(pre, str(folder / "preprocessor_config.json"))
        shape = pixels.shape
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from e
    size = int(vis.get("image_size", 224))
    if shape != (size, size):
        raise ConfigError(f"{what}: {spec}: its preprocessing makes {shape[0]}x{shape[1]} images, its vision tower "
                          f"takes {size}x{size}")
    mean = tuple(float(x) for x in pre.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(x) for x in pre.get("image_std", (0.5, 0.5, 0.5)))
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if not pre.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    default_len = 77 if kind == "clip" else 64
    return Complete(folder, kind, dim, size, int(txt.get("max_position_embeddings", default_len)), pixels,
                    mean, std, rescale)  # type: ignore[arg-type]


def fingerprint(spec: str) -> str:
    """The identity of a pretrained folder's content (every file's bytes), so that other weights at the
    same path are other weights (caches keyed by it: pretraining)."""
    folder = local_folder(spec)
    h = hashlib.sha256()
    for f in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(folder)}\n".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:24]
