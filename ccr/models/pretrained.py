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
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ccr.errors import ConfigError, first_line
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
    except RecursionError:
        raise ConfigError(f"{what}: {path} is nested too deeply to be a config") from None
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
    pre = _read_json(folder / "preprocessor_config.json", what)
    try:
        return _describe(spec, folder, cfg, pre)
    except ConfigError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:  # a value of the wrong kind
        raise ConfigError(f"{what}: {folder} holds a config value ccr cannot use ({type(e).__name__}: "
                          f"{first_line(e, 200)}); is it a CLIP or SigLIP folder as "
                          "transformers saves one?") from None


def _positive_int(d: dict[str, Any], key: str, default: int, where: str) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model.pretrained: {where}: {key} must be a positive whole number, got {v!r}"[:300])
    return v


def _channels(pre: dict[str, Any], key: str, default: float, where: str) -> tuple[float, float, float]:
    v = pre.get(key, (default,) * 3)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v] * 3
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise ConfigError(f"model.pretrained: {where}: {key} must be 3 numbers (one per channel), got {v!r}"[:300])
    if key == "image_std" and not all(x > 0 for x in v):
        raise ConfigError(f"model.pretrained: {where}: image_std must be above 0 for every channel (pixels are "
                          f"divided by it), got {list(v)}")
    return (float(v[0]), float(v[1]), float(v[2]))


def _describe(spec: str, folder: Path, cfg: dict[str, Any], pre: dict[str, Any]) -> Complete:
    what = "model.pretrained"
    kind = cfg.get("model_type")
    if kind not in COMPLETE:
        raise ConfigError(f"{what}: {spec} is a {kind!r} model; complete dual encoders are {', '.join(COMPLETE)} "
                          "(for separate towers use model.image.pretrained and model.text.pretrained)")
    where = str(folder / "config.json")
    vis, txt = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
    for name, part in (("vision_config", vis), ("text_config", txt)):
        if not isinstance(part, dict):
            raise ConfigError(f"{what}: {where}: {name} must be an object, got {type(part).__name__}")
    if kind == "clip":
        dim = _positive_int(cfg, "projection_dim", 512, where)
    else:  # SigLIP: the vision head keeps the hidden size, the text head projects to it
        dim = _positive_int(vis, "hidden_size", 768, where)
        tdim = int(txt.get("projection_size") or _positive_int(txt, "hidden_size", 768, where))
        if tdim != dim:
            raise ConfigError(f"{what}: {spec}: image embeddings have {dim} dimensions, text ones {tdim}")
    pre_file = str(folder / "preprocessor_config.json")
    try:
        pixels = Pixels.from_processor_config(pre, pre_file)
        shape = pixels.shape
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from e
    size = _positive_int(vis, "image_size", 224, where)
    if shape != (size, size):
        raise ConfigError(f"{what}: {spec}: its preprocessing makes {shape[0]}x{shape[1]} images, its vision tower "
                          f"takes {size}x{size}")
    mean = _channels(pre, "image_mean", 0.5, pre_file)
    std = _channels(pre, "image_std", 0.5, pre_file)
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if not math.isfinite(rescale) or rescale <= 0:
        raise ConfigError(f"{what}: {pre_file}: rescale_factor must be above 0, got {pre.get('rescale_factor')!r}")
    if not pre.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    default_len = 77 if kind == "clip" else 64
    return Complete(folder, kind, dim, size, _positive_int(txt, "max_position_embeddings", default_len, where),
                    pixels, mean, std, rescale)


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
