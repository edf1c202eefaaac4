"""What every result file carries to be reproducible: versions, git commit, host."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ccr._version import __version__

PACKAGES = ("torch", "transformers", "faiss-cpu", "faiss-gpu", "numpy", "ray", "optuna")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "ccr": __version__}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_info() -> dict[str, Any]:
    """The commit of the ccr source tree (and whether it had uncommitted changes), if it is a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def device_name(device: Any) -> str:
    """The hardware behind a torch device, as a throughput is a property of it: the GPU's name, or the CPU's model
    (from /proc/cpuinfo where there is one)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def provenance() -> dict[str, Any]:
    return {"versions": versions(), "git": git_info(), "host": platform.node(), "platform": platform.platform()}
