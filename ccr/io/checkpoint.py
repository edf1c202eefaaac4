"""Checkpoints that load without running code.

`torch.load(..., weights_only=False)` unpickles arbitrary objects, so a checkpoint received from a
colleague, a bucket or `ray rsync-down` could run anything. ccr's checkpoints hold only tensors,
numbers, strings and containers: numpy arrays (galleries, replay memory, recall matrices) are stored
as tensors under a tag and turned back on load, so every load uses `weights_only=True`. A file that
needs anything else is refused with an error naming it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ccr.errors import CheckpointError  # noqa: F401  (defined there, raised and re-exported here)

_ND = "__ndarray__"


def pack(obj: Any) -> Any:
    """Replace numpy arrays and scalars by tensors / Python numbers, recursively."""
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return {_ND: torch.from_numpy(np.ascontiguousarray(obj)), "dtype": obj.dtype.str}
        return {_ND: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack(v) for v in obj)
    return obj


def unpack(obj: Any) -> Any:
    """The inverse of `pack`."""
    import torch

    if isinstance(obj, dict):
        if _ND in obj and set(obj) == {_ND, "dtype"}:
            v = obj[_ND]
            return (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.dtype(obj["dtype"]),
                                                                                     copy=True)
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(v) for v in obj)
    return obj


def to_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(pack(obj), buf)
    return buf.getvalue()


def from_bytes(data: bytes, name: str, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with `weights_only=True`; any failure is a CheckpointError naming `name`."""
    import torch

    try:
        return unpack(torch.load(io.BytesIO(data), map_location=map_location, weights_only=True))
    except Exception as e:  # noqa: BLE001  (pickle, zip and torch raise many kinds)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"checkpoint {name} holds objects other than tensors and plain data "
                                  f"(refused: loading it could run code): {first}") from e
        raise CheckpointError(f"checkpoint {name} cannot be read (corrupt or truncated): {first}") from e


__all__ = ["CheckpointError", "from_bytes", "pack", "to_bytes", "unpack"]

def task_label(step: int, order: Sequence[str]) -> str:
    """How files and folders name the state after a task: its position counted from 1, as logs count,
    and its name (`02_boxes`), so a listing reads in order and says which task it is."""
    return f"{step + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', order[step])}"
