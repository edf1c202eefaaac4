"""Data and weights by URI: what a study reads from a bucket is staged once per node, and read from there.

Every `data.*` location, `model.pretrained`, `model.image.pretrained` and `model.text.pretrained` may be a
storage URI in the same form as `--out` (`s3://bucket/prefix?endpoint_override=...`, `gs://...`). The
driver, every trial, every Ray Train worker and every shard actor open their inputs through `stage`, which
returns a path on this node's disk:

- **Keyed by content.** The staged copy lives under `CACHE/staged/<URI digest>/<listing digest>/data`,
  where the listing digest covers every object's name, size and modification time (pyarrow's listing
  exposes no ETag; an object re-uploaded changes its modification time). Changed objects stage anew.
- **Once per node.** A file lock (per URI, on this node) makes one process copy; the others wait and find
  the copy. Processes on a node that joins later stage for themselves.
- **Never half.** The copy is made in a `.partial-*` folder next to it, its sizes are checked against the
  listing, a marker (what, when, how long) is written last, and the folder is renamed into place. A node
  killed while staging leaves a `.partial-*` folder, which the next stager deletes; nothing reads it.
- **In parallel.** The objects are copied by pyarrow's `copy_files` on its I/O thread pool
  (`CCR_STAGE_THREADS` raises the pool's size: many small objects, as an image folder, want more).

`config.yaml` keeps the URIs: only the loaders see the staged paths. Each staging (and each decoding pass
over images, `ccr.data.karpathy`) is one line in `CACHE/events.jsonl`: what a node did, and how long it took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccr.errors import ConfigError, DataError, StorageError
from ccr.io import copies
from ccr.io.copies import LISTING, MARKER, hold, link_unchanged, remove_unused
from ccr.io.redact import redact_tree
from ccr.io.storage import Storage, cache_root, is_uri, node_lock

log = logging.getLogger(__name__)

# the DataConfig keys that name inputs (files or folders)
DATA_LOCATIONS = ("path", "images", "tasks_file", "split_file", "task_map", "instances")


def is_remote(location: str | None) -> bool:
    """A location to stage: a URI other than file://."""
    return bool(location) and is_uri(location) and not str(location).startswith("file://")


@dataclass(frozen=True)
class Staged:
    """Where a URI's staged copy is on this node, and what it holds."""

    uri: str  # as given (with its query)
    shown: str  # without the query: for messages
    local: Path  # the file, or the folder of files
    folder: Path  # CACHE/staged/<uri digest>/<listing digest>
    kind: str  # file | folder
    files: int
    bytes: int
    signature: str  # the listing digest: the identity of what was staged


def _root(cache_dir: str | Path | None) -> Path:
    return cache_root(str(cache_dir) if cache_dir else None)


def event(cache_dir: str | Path | None, kind: str, **fields: Any) -> None:
    """One line in this node's `CACHE/events.jsonl` (appended whole: lines of processes do not interleave)."""
    line = json.dumps({"event": kind, "host": platform.node(), "pid": os.getpid(), "time": time.time(),
                       **redact_tree(fields)})
    path = _root(cache_dir) / "events.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:  # a read-only cache: the record is lost, the work is not
        log.debug("cannot record %s in %s: %s", kind, path, e)


def events(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """This node's recorded stagings and decoding passes, oldest first."""
    path = _root(cache_dir) / "events.jsonl"
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _listing(store: Storage, what: str) -> tuple[str, list[tuple[str, int, int]]]:
    """('file' | 'folder', [(relative name, size, mtime ns)]) of what `store` names; one clear error if nothing."""
    import pyarrow.fs as pafs

    try:
        info = store.fs.get_file_info(store.root)
        if info.type == pafs.FileType.File:
            return "file", [(store.root.rsplit("/", 1)[-1], int(info.size), int(info.mtime_ns or 0))]
        infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise DataError(f"{what}: cannot read {store.display()} ({str(e).splitlines()[0][:200]})") from e
    n = len(store.root) + 1
    files = sorted((i.path[n:], int(i.size), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File)
    odd = next((f[0] for f in files if "" in f[0].split("/") or f[0].startswith("/") or ".." in f[0].split("/")),
               None)
    if odd is not None:
        raise DataError(f"{what}: the object {store.display()}/{odd} cannot be a file on disk (an empty or '..' "
                        "part in its key); rename it")
    if not files:
        raise DataError(f"{what}: nothing at {store.display()} (no such object or prefix)")
    return "folder", files


def stage_threads() -> int:
    """CCR_STAGE_THREADS: I/O threads for staging (0: pyarrow's own count); anything else is one line."""
    raw = os.environ.get("CCR_STAGE_THREADS", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise ConfigError(f"CCR_STAGE_THREADS must be a whole number from 1 to 1024, got {raw[:40]!r}")
    return int(raw)


def _copy(store: Storage, dest: Path, only: list[str] | None = None) -> None:
    """The objects into `dest` (the file's name, or a folder that exists), in parallel on pyarrow's I/O threads
    (`only`: just these names of a folder)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    want = stage_threads()
    if want > pa.io_thread_count():
        pa.set_io_thread_count(want)
    if only is not None:
        for rel in only:
            copy_file(store, rel, dest / rel)
        return
    pafs.copy_files(store.root, str(dest), source_filesystem=store.fs,
                    destination_filesystem=pafs.LocalFileSystem(), chunk_size=1 << 20, use_threads=True)


@dataclass(frozen=True)
class _Plan:
    """What staging one URI needs: its store, its listing, where it goes, and what to copy."""

    store: Storage
    files: list  # [(relative name, size, mtime ns)]
    found: Staged
    what: str
    cache_dir: str | Path | None
    only: list[str] | None  # a folder's top-level files only (top_only), else None: every object


# folders listed but not copied yet (stage(copy=False)): local path -> what staging them needs
_PENDING: dict[str, _Plan] = {}


def stage(uri: str, what: str, cache_dir: str | Path | None = None, copy: bool = True,
          top_only: bool = False) -> Staged:
    """`uri`'s objects on this node (see the module docstring); `what` names the config key in errors. With
    `copy=False` the objects are listed, not copied: `pending_files` answers from the listing until
    `materialize` copies them (an image folder whose pixels come from a shared cache is never copied). With
    `top_only`, a folder's files but not its subfolders (Visual Genome's JSON files, not the images beside them)."""
    try:
        store = Storage(uri)
    except StorageError as e:
        raise ConfigError(f"{what}: {e}") from e
    kind, files = _listing(store, what)
    only = None  # copy every object of the listing
    if top_only and kind == "folder" and any("/" in f[0] for f in files):
        files = [f for f in files if "/" not in f[0]]
        only = [f[0] for f in files]
        if not files:
            raise DataError(f"{what}: {store.display()} holds no files (only folders)")
    sig = hashlib.sha256(json.dumps([kind, files]).encode()).hexdigest()[:20]
    base = _root(cache_dir) / "staged" / hashlib.sha256(uri.encode()).hexdigest()[:20]
    folder = base / sig
    name = files[0][0] if kind == "file" else ""
    total = sum(f[1] for f in files)
    found = Staged(uri, store.display(), folder / "data" / name if name else folder / "data", folder, kind,
                   len(files), total, sig)
    if (folder / MARKER).is_file() and not _damaged(found, files):
        hold(folder)
        return found
    plan = _Plan(store, files, found, what, cache_dir, only)
    if not copy:
        _PENDING[str(found.local)] = plan
        return found
    return _stage(plan)


def _damaged(found: Staged, files: list) -> str | None:
    """A file of a complete copy that is gone or changed on this disk (deleted by hand, a cleaner): its name."""
    data = found.folder / "data"
    for name, size, _ in files:
        p = data / name if found.kind == "folder" else found.local
        try:
            if p.stat().st_size != size:
                return name
        except OSError:
            return name
    return None


def _stage(plan: _Plan) -> Staged:
    try:
        return _stage_locked(plan)
    except OSError as e:  # the node's cache cannot be written (full, read-only): one line naming it
        raise DataError(f"{plan.what}: cannot stage {plan.store.display()} into {plan.found.folder.parent} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def pending_files(path: str | Path) -> dict[str, int] | None:
    """{relative name: size} of a folder listed by stage(copy=False) and not copied yet; None otherwise."""
    plan = _PENDING.get(str(path))
    if plan is None or (plan.found.folder / MARKER).is_file():
        return None
    return {name: size for name, size, _ in plan.files}


def materialize(path: str | Path) -> None:
    """Copy a folder that stage(copy=False) only listed (a no-op for anything else)."""
    plan = _PENDING.pop(str(path), None)
    if plan is not None and not (plan.found.folder / MARKER).is_file():
        _stage(plan)


def _stage_locked(plan: _Plan) -> Staged:
    store, files, found, what = plan.store, plan.files, plan.found, plan.what
    folder, sig, total, base = found.folder, found.signature, found.bytes, found.folder.parent
    with node_lock(base.with_suffix(".lock")):
        if (folder / MARKER).is_file():  # another process of this node staged it while this one waited
            bad = _damaged(found, files)
            if not bad:
                hold(folder)
                return found
            log.warning("%s: %s is missing or changed in the staged copy %s; staging again what is not there",
                        what, bad, folder)
            os.replace(folder, base / f".damaged-{sig}-{os.getpid()}")
        for old in base.glob(".partial-*"):  # a stager killed before it renamed: never read, removed
            log.info("removing %s, left by a staging that was killed", old)
            shutil.rmtree(old, ignore_errors=True)
        tmp = base / f".partial-{sig}-{os.getpid()}"
        started = time.time()
        try:
            (tmp / "data").mkdir(parents=True, exist_ok=True)
            reused = link_unchanged(files, base, folder, tmp / "data") if found.kind == "folder" else set()
            todo = [f[0] for f in files if f[0] not in reused]
            log.info("staging %s (%d files, %.1f MB) into %s%s", store.display(), len(todo),
                     sum(f[1] for f in files if f[0] not in reused) / 1e6, folder,
                     f" ({len(reused)} unchanged files taken from the previous copy)" if reused else "")
            if found.kind == "file":
                _copy(store, tmp / "data" / found.local.name)
            elif reused or plan.only is not None:
                _copy(store, tmp / "data", todo)
            else:
                _copy(store, tmp / "data")
            short = [f for f, size, _ in files if not (tmp / "data" / f).is_file()
                     or (tmp / "data" / f).stat().st_size != size]
            if short:
                raise DataError(f"{what}: staging {store.display()} copied {len(short)} file(s) incompletely "
                                f"(e.g. {short[0]}); the store changed or failed while it was read")
            seconds = time.time() - started
            record = {"uri": store.display(), "files": len(files), "bytes": total, "seconds": round(seconds, 3),
                      "copied": len(todo), "host": platform.node(), "pid": os.getpid(), "staged": time.time()}
            (tmp / LISTING).write_text(json.dumps(files))
            (tmp / MARKER).write_text(json.dumps(record) + "\n")  # last: the copy is whole
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        hold(folder)
        for gone in remove_unused(base, keep=folder):  # earlier copies of this URI that nothing reads any more
            log.info("removed %s, an earlier copy of %s that no process reads", gone, store.display())
        event(plan.cache_dir, "staged", uri=store.display(), what=what, files=len(files), bytes=total,
              copied=len(todo), seconds=round(seconds, 3))
    return found


def local_data(d, listed_only: tuple[str, ...] = ()):
    """A DataConfig whose URI locations are this node's staged copies (the same object when none is a URI); the
    keys in `listed_only` are listed, not copied (see `stage(copy=False)`)."""
    # a folder data.path (precomputed features, Visual Genome's JSON files) holds its files at the top: the
    # subfolders beside them (Visual Genome's images, staged through data.images) are not copied twice
    staged = {k: local_location(v, f"data.{k}", d.cache_dir, copy=k not in listed_only, top_only=k == "path")
              for k in DATA_LOCATIONS
              if isinstance(v := getattr(d, k), str) and (is_remote(v) or v.startswith("file://"))}
    return dataclasses.replace(d, **staged) if staged else d


def local_location(location: str, what: str, cache_dir: str | Path | None = None, copy: bool = True,
                   top_only: bool = False) -> str:
    """Where this node reads a data location: a URI's staged copy (`stage`), file:///abs/path (a form `--out`
    takes too) as the path itself, a path as it is."""
    if is_remote(location):
        return str(stage(location, what, cache_dir, copy=copy, top_only=top_only).local)
    return location.removeprefix("file://")


def staged_of(d) -> dict[str, Staged]:
    """Where a DataConfig's URI locations are staged on this node (listed again, nothing copied): for the card."""
    return {k: stage(v, f"data.{k}", d.cache_dir, copy=False, top_only=k == "path") for k in DATA_LOCATIONS
            if is_remote(v := getattr(d, k))}


def identity(path: str | Path) -> str | None:
    """The listing digest of the staged copy that holds `path`, or None for a path that was not staged: an
    identity of the files that is the same on every node (their local paths and mtimes are not)."""
    p = Path(path)
    if str(p) in _PENDING:
        return _PENDING[str(p)].found.signature
    for parent in (p, *p.parents):
        if parent.name == "data" and (parent.parent / MARKER).is_file():
            return parent.parent.name
    return None


def clean(cache_dir: str | Path | None = None) -> tuple[int, int]:
    """`ccr data --clean`: every staged copy on this node that no process reads, and the leftovers of killed
    stagings; returns (folders removed, bytes freed)."""
    return copies.clean(_root(cache_dir) / "staged")


def partials(cache_dir: str | Path | None = None) -> list[Path]:
    """Leftovers of killed stagings (for `ccr data`): listed, never read."""
    root = _root(cache_dir) / "staged"
    with contextlib.suppress(OSError):
        return sorted(root.glob("*/.partial-*"))
    return []


def copy_file(store: Storage, rel: str, local: Path) -> None:
    """One (large) file from storage to this node's disk, streamed in parallel chunks."""
    import pyarrow.fs as pafs

    local.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(store.fs_path(rel), str(local), source_filesystem=store.filesystem,
                    destination_filesystem=pafs.LocalFileSystem(), chunk_size=8 << 20, use_threads=True)


def put_file(local: Path, store: Storage, rel: str) -> None:
    """One (large) file to storage, streamed: an object appears when its upload completes; on a mounted folder a
    temporary file is renamed into place."""
    import pyarrow.fs as pafs

    if store.local_path is not None:
        dest = store.local_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".ccr-{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
        return
    pafs.copy_files(str(local), store.fs_path(rel), source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=store.fs, chunk_size=8 << 20, use_threads=True)
