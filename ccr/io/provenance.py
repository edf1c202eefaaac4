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


def provenance() -> dict[str, Any]:
    return {"versions": versions(), "git": git_info(), "host": platform.node(), "platform": platform.platform()}
