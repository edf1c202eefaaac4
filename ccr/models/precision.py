"""Mixed precision where it pays: bf16 autocast on a GPU, full precision on a CPU."""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def no_grad(fn):
    """`torch.no_grad()` as a decorator that imports torch when the function runs, not when its module is
    imported (checking a config imports the strategies, and must not wait for torch)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp`; a no-op context elsewhere (CPU autocast is slower there)."""
    if amp and device.type == "cuda":
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
