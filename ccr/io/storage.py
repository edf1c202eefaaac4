"""Where results live: a local folder, a shared mount, or an object store named by a URI.

On a multi-node cluster nothing that analysis or resume needs may stay on the disk of the node that
ran a trial, so every durable artifact (config, results, checkpoints, tokenizer, logs, snapshots)
goes through a `Storage`: a root on a `pyarrow.fs` filesystem. URIs are pyarrow's own
(`pyarrow.fs.FileSystem.from_uri`), e.g.

    s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http

with credentials from the usual AWS environment variables. Node-local scratch (tokenizer files that
transformers must read from a folder, the log being written) is a cache under `CCR_SCRATCH`
(default `~/.cache/ccr/scratch`), never the only copy.

Writes are atomic as far as the store allows: on a local or mounted filesystem a temporary file is
fsynced and renamed; on an object store an object appears whole when its upload completes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ccr.errors import StorageError, StorageWriteError
from ccr.io.redact import redact

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations (s3, gs, hdfs, file, ...), False for plain paths."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


# every temporary file or folder ccr makes in a folder it writes to starts with this: the leftovers of a killed
# write that a later run may remove (and nothing else: --out may be a folder holding the user's own files)
TMP_PREFIX = ".ccr-"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[None]:
    """One process per node does what the lock guards (builds a cache file, stages a folder); the others
    wait for it, then find what it made. A file lock: released when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_root(cache_dir: str | None = None) -> Path:
    """ccr's data cache: data.cache_dir, else CCR_CACHE, else ~/.cache/ccr."""
    return Path(cache_dir or os.environ.get("CCR_CACHE", Path.home() / ".cache" / "ccr"))


def cache_write(path: str | Path, write) -> bool:
    """A cache file written with `write(path)`, atomically; a cache that cannot be written (a read-only
    data.cache_dir or CCR_CACHE) is a warning, never the end of a study: the work is redone next time."""
    import logging

    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except OSError as e:
        logging.getLogger(__name__).warning("cannot write the cache file %s (%s); going on without it", path,
                                            e.strerror or e)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


def scratch_root() -> Path:
    """The node-local cache folder (`CCR_SCRATCH`): give each node of a cluster its own."""
    return Path(os.environ.get("CCR_SCRATCH") or Path.home() / ".cache" / "ccr" / "scratch")


class Storage:
    """A folder on some filesystem: read, write (atomically), list and copy files by relative path."""

    def __init__(self, location: str | os.PathLike | Storage):
        if isinstance(location, Storage):
            location = location.uri
        location = os.fspath(location)
        self.remote = is_uri(location) and not location.startswith("file://")
        if self.remote:
            import pyarrow.fs as pafs

            base, _, query = location.partition("?")
            self._base, self._query = base.rstrip("/"), query
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            except (ValueError, OSError, TypeError) as e:
                raise StorageError(f"cannot open storage {location!r}: {e}") from e
            self.root = self.root.rstrip("/")
            self.uri = location
        else:
            if location.startswith("file://"):
                location = location[len("file://"):]
            path = Path(location).expanduser().resolve()
            self._base, self._query = str(path), ""
            self.fs, self.root, self.uri = None, str(path), str(path)

    def remove_created(self) -> None:
        """Remove the (still empty) folders `open_storage` made for this location: a command refused after it
        opened its output leaves nothing behind. Not done on success, where the folder is about to be written
        (and other processes of the same study, Ray Train's ranks, open it too)."""
        for p in getattr(self, "created", []):
            with contextlib.suppress(OSError):
                p.rmdir()
        self.created = []

    # ---- naming --------------------------------------------------------------------------------
    def __reduce__(self):  # pickles by URI: filesystems are rebuilt on the receiving node
        return (Storage, (self.uri,))

    def __repr__(self) -> str:
        return f"Storage({self.display()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def display(self, rel: str = "") -> str:
        """A name for messages: the URI without its query (no endpoints or options in logs) or credentials."""
        return redact(self._base + (f"/{rel}" if rel else ""))

    def child(self, rel: str) -> Storage:
        rel = rel.strip("/")
        if not self.remote:
            return Storage(str(Path(self.root) / rel))
        return Storage(f"{self._base}/{rel}" + (f"?{self._query}" if self._query else ""))

    @property
    def local_path(self) -> Path | None:
        """The folder itself when it is on a local (or mounted) filesystem, else None."""
        return None if self.remote else Path(self.root)

    def fs_path(self, rel: str = "") -> str:
        """The path inside `self.filesystem` (for Ray's storage_path + storage_filesystem)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    @property
    def filesystem(self):
        """A pyarrow filesystem for this storage (LocalFileSystem for plain paths)."""
        if self.fs is None:
            import pyarrow.fs as pafs

            return pafs.LocalFileSystem()
        return self.fs

    def scratch(self) -> Path:
        """The node-local working folder for this storage: the folder itself when local, else a cache."""
        if not self.remote:
            return Path(self.root)
        path = scratch_root() / hashlib.sha256(self._base.encode()).hexdigest()[:16]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot use the node's scratch folder {path} (CCR_SCRATCH): "
                               f"{e.strerror or e}; point CCR_SCRATCH at a writable folder") from e
        return path

    # ---- files ---------------------------------------------------------------------------------
    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel.strip('/')}" if rel else self.root

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return Path(self._p(rel)).exists()
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        if not self.remote:
            return Path(self._p(rel)).is_file()
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""
        if not self.remote:
            return Path(self._p(rel)).read_bytes()
        if not self.is_file(rel):
            raise FileNotFoundError(self.display(rel))
        with self.fs.open_input_stream(self._p(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic write: readers see the old file or the new one, never half of one."""
        try:
            if not self.remote:
                atomic_write_bytes(self._p(rel), data)
                return
            with self.fs.open_output_stream(self._p(rel)) as f:  # an object appears when its upload completes
                f.write(data)
        except OSError as e:
            raise StorageWriteError(f"cannot write {self.display(rel)}: {e.strerror or e}") from e

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())

    def append_line(self, rel: str, line: str) -> None:
        """Append one line (read-modify-write: object stores have no append; one writer per file)."""
        try:
            old = self.read_bytes(rel)
        except FileNotFoundError:
            old = b""
        self.write_bytes(rel, old + line.rstrip("\n").encode() + b"\n")

    def delete(self, rel: str) -> None:
        if not self.remote:
            Path(self._p(rel)).unlink(missing_ok=True)
        elif self.is_file(rel):
            self.fs.delete_file(self._p(rel))

    def files(self, rel: str = "") -> list[str]:
        """Every file below `rel`, as paths relative to this storage's root, sorted."""
        return [path for path, _, _ in self.listing(rel)]

    def listing(self, rel: str = "") -> list[tuple[str, int, float]]:
        """(path, size, modification time) of every file below `rel`, paths relative to this storage's root,
        sorted: what identifies files a node keeps something it derived from (a scan) without reading them."""
        base = self._p(rel)
        if not self.remote:
            root = Path(base)
            return sorted((str(p.relative_to(self.root)), (st := p.stat()).st_size, st.st_mtime)
                          for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"cannot list {self.display(rel)}: {e}") from e
        n = len(self.root) + 1
        return sorted((i.path[n:], int(i.size), i.mtime.timestamp() if i.mtime else 0.0)
                      for i in infos if i.type == pafs.FileType.File)

    def modified(self, rel: str) -> list[tuple[float, str]]:
        """(modification time, path) of every object below `rel` of an object store, as the store recorded it
        when the write landed (its own clock, not the writer's), oldest first."""
        return sorted((mtime, path) for path, _, mtime in self.listing(rel) if mtime)

    # ---- folders between storage and a node's disk ----------------------------------------------
    def upload_dir(self, local: str | Path, rel: str, last: str | None = None) -> None:
        """Copy a local folder's files to `rel/` (each file atomically; `last`, a marker, after the rest)."""
        local = Path(local)
        for p in sorted(local.rglob("*"), key=lambda p: (p.name == last, str(p))):
            if p.is_file():
                self.write_bytes(f"{rel}/{p.relative_to(local)}", p.read_bytes())

    def download_dir(self, rel: str, local: str | Path) -> Path:
        """Copy `rel/`'s files into a local folder (a cache: existing files with the same bytes are kept)."""
        local = Path(local)
        prefix = rel.strip("/") + "/" if rel.strip("/") else ""
        for name in self.files(rel):
            data = self.read_bytes(name)
            dest = local / name[len(prefix):]
            if not (dest.is_file() and dest.read_bytes() == data):
                atomic_write_bytes(dest, data)
        return local


def open_storage(location: str | os.PathLike | Storage) -> Storage:
    """A Storage for a path or URI, with one clear error for a location that cannot be used."""
    if not isinstance(location, Storage) and not str(location).strip():
        raise StorageError("--out is empty (an unset variable?); give a folder or a storage URI")
    store = Storage(location)
    if store.remote:
        try:
            store.exists()
            is_object = store.filesystem.get_file_info(store.fs_path()).type.name == "File"
        except OSError as e:
            raise StorageError(f"cannot reach storage {store.display()}: {e}") from e
        if is_object:
            raise StorageError(f"{store.display()} is an object, not a prefix (folder): choose another --out")
    elif store.local_path.exists() and not store.local_path.is_dir():
        raise StorageError(f"{store.local_path} is a file, not a folder")
    else:  # a folder we cannot write to fails here, not after the first task has trained
        path = store.local_path
        store.created = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=f"{TMP_PREFIX}probe.", suffix=".tmp")
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):  # another process of the study may have cleaned it up
                os.unlink(probe)
        except OSError as e:
            store.remove_created()
            raise StorageError(f"cannot write to {path}: {e.strerror or e}") from e
    return store


__all__ = ["Storage", "StorageError", "StorageWriteError", "is_uri", "open_storage", "scratch_root"]
