"""Mixed precision where it pays: bf16 autocast on a GPU, full precision on a CPU."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp`; a no-op context elsewhere (CPU autocast is slower there)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
