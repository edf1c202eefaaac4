"""Staged copies on a node after they are made: which a process reads (a shared lock on each, held for the
process's life), which nothing reads and can go (superseded copies of a URI, `ccr data --clean`), and which
files of earlier copies a new staging of the same URI can link instead of copying.

A copy is a folder `CACHE/staged/<URI digest>/<listing digest>` holding `data/`, the listing it was staged
from (`listing.json`) and, written last, its marker (see ccr.io.staging).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ccr.io.storage import node_lock

MARKER = ".ccr-complete"
LISTING = "listing.json"  # beside the marker: every staged object's (name, size, mtime), to reuse unchanged files
IN_USE = ".in-use"  # a shared lock on it: some process reads this copy (it is not removed while one does)
_HELD: dict[str, int] = {}  # staged folders this process reads -> the file descriptor of its shared lock


def hold(folder: Path) -> None:
    """Say, for as long as this process lives, that it reads `folder` (a shared lock the OS drops at exit)."""
    import fcntl

    if str(folder) in _HELD:
        return
    try:
        fd = os.open(folder / IN_USE, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # a read-only cache: nothing is removed from it either
        return
    _HELD[str(folder)] = fd


def _unused(folder: Path) -> bool:
    """No process holds `folder` (see hold); true too for a folder without the lock file."""
    import fcntl

    try:
        fd = os.open(folder / IN_USE, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_unused(base: Path, keep: Path | None = None) -> dict[Path, int]:
    """Remove one URI's staged copies (under `base`) that no process reads, except `keep`; returns
    {folder removed: bytes freed}. Called with the URI's node lock held."""
    gone = {}
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if not d.is_dir() or d == keep or d.name.startswith(".partial-"):
            continue
        if ((d / MARKER).is_file() or d.name.startswith(".damaged-")) and _unused(d):
            gone[d] = _bytes(d)
            shutil.rmtree(d, ignore_errors=True)
    return gone


def previous(base: Path, keep: Path) -> dict[str, Path]:
    """{name: (size, mtime) key -> file} of earlier copies of this URI (complete, or set aside as damaged): the
    files a new staging can link instead of copying."""
    known: dict[str, Path] = {}
    for d in sorted(base.iterdir(), key=lambda x: x.stat().st_mtime) if base.is_dir() else []:
        if d == keep or not d.is_dir() or not (d / LISTING).is_file():
            continue
        try:
            listing = json.loads((d / LISTING).read_text())
        except (OSError, ValueError):
            continue
        for name, size, mtime in listing:
            f = d / "data" / name
            if f.is_file() and f.stat().st_size == size:
                known[json.dumps([name, size, mtime])] = f
    return known


def link_unchanged(files: list, base: Path, keep: Path, dest: Path) -> set[str]:
    """Hard-link into `dest` each file an earlier copy of this URI holds unchanged (same name, size and
    modification time in the store's listing); returns their names. Only the rest is copied from storage."""
    known = previous(base, keep)
    done = set()
    for name, size, mtime in files:
        src = known.get(json.dumps([name, size, mtime]))
        if src is None:
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest / name)
        except OSError:
            shutil.copyfile(src, dest / name)
        done.add(name)
    return done


def clean(root: Path) -> tuple[int, int]:
    """`ccr data --clean`: every staged copy on this node that no process reads, and the leftovers of killed
    stagings; returns (folders removed, bytes freed). A later study stages what it needs again."""
    removed, freed = 0, 0
    for base in sorted(root.iterdir()) if root.is_dir() else []:
        if not base.is_dir():
            continue
        with node_lock(base.with_suffix(".lock")):  # no staging of this URI is under way
            for d in base.glob(".partial-*"):
                freed += _bytes(d)
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            gone = remove_unused(base)
            removed += len(gone)
            freed += sum(gone.values())
    return removed, freed


def _bytes(d: Path) -> int:
    """What removing `d` frees: its files not also linked from another copy."""
    return sum(st.st_size for f in d.rglob("*") if f.is_file() and (st := f.stat()).st_nlink == 1)
