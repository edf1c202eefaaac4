"""One study or sweep per storage location at a time: a lock object with the holder's host, pid and start,
claimed through the store itself (a shared folder or a bucket, where no file lock reaches across nodes), so a
second `ccr run` or `ccr sweep` on the same --out is refused rather than interleaved, and a lock left by a
killed process is taken over."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from ccr.errors import LockedError
from ccr.io.storage import Storage

LOCK = ".ccr.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_or_refuse(store: Storage, other: dict[str, Any], me: dict[str, Any]) -> None:
    """Return when `other`'s lock was left by a dead process on this host; else refuse with who holds it."""
    import logging

    if other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
        logging.getLogger(__name__).warning("%s: taking over a lock left by a stopped process (pid %s)",
                                            store.display(), other.get("pid"))
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("started", 0)))
    raise LockedError(
        f"{store.display()} is in use by another ccr {other.get('what', 'process')} (pid {other.get('pid')} "
        f"on {other.get('host')}, since {when}: {other.get('command', '?')}). Two runs in one folder "
        f"would overwrite each other's results: wait for it, or use another --out. If that process "
        f"is gone, delete {store.display(LOCK)}")


def _read_lock(store: Storage) -> dict[str, Any]:
    try:
        held = store.read_json(LOCK)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return held if isinstance(held, dict) else {}


@contextlib.contextmanager
def exclusive(store: Storage, what: str) -> Iterator[None]:
    """Hold `store` for this process while the block runs: a second `ccr run` / `ccr sweep` on the same
    output is refused instead of silently overwriting it. A lock left by a dead process on this host is
    taken over (with a warning); one from another host is refused with the file to delete if its owner
    is gone. On a local or mounted folder the lock file is created exclusively (O_EXCL). An object store
    has no create-if-absent here, so starts are serialised by claims: each writes a claim of its own (a
    unique name, so none overwrites another), waits CLAIM_SETTLE seconds, lists the claims, and only the
    earliest proceeds, by the time the *store* recorded each claim landing (then the name) and keeps its
    claim while it holds the lock. With the read-after-write consistency S3 and its compatibles give, a
    start whose claim landed after the winner looked sees the winner's earlier claim and yields; two that
    see each other agree on the same order. Claims older than CLAIM_WINDOW are those of killed starts; a
    live holder's lock file refuses later starts whatever the age of its claim.
    """
    import getpass
    import platform
    import sys

    me = {"pid": os.getpid(), "host": platform.node(), "user": getpass.getuser(), "what": what,
          "command": " ".join(sys.argv)[:300], "started": time.time()}
    mine = lambda held: held.get("pid") == me["pid"] and held.get("host") == me["host"]  # noqa: E731
    if store.local_path is not None:
        path = store.local_path / LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _stale_or_refuse(store, _read_lock(store), me)
                if attempt:
                    raise LockedError(f"{store.display()}: another ccr process took the lock at the same "
                                      "moment") from None
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
    else:
        other = _read_lock(store)
        if other:
            _stale_or_refuse(store, other, me)
        claim = _claim(store, me)
        store.write_json(LOCK, me)
    try:
        yield
    finally:  # a store that went away (the S3 server killed) must not bury the error that ended the run
        with contextlib.suppress(OSError):
            if mine(_read_lock(store)):
                store.delete(LOCK)
        if store.local_path is None:
            with contextlib.suppress(OSError):
                store.delete(claim)  # kept while held: a later start sees an earlier claim and yields


CLAIMS = ".ccr.claims"
CLAIM_SETTLE = 1.5  # seconds a start waits for the claims of starts at the same moment to become visible
CLAIM_WINDOW = 30.0  # claims older than this are leftovers of killed starts, not contenders


def _claim(store: Storage, me: dict[str, Any]) -> str:
    """Claim `store` on an object store; returns the claim's name when this process won, else raises."""
    import uuid

    name = f"{CLAIMS}/{uuid.uuid4().hex}"
    store.write_json(name, me)
    time.sleep(CLAIM_SETTLE)  # longer than a second: S3 records modification times to the second
    landed = store.modified(CLAIMS)
    newest = max((t for t, _ in landed), default=time.time())
    live = [n for t, n in landed if newest - t < CLAIM_WINDOW]  # by the store's own clock
    while live and live[0] != name:  # the claim of a process that died on this host is no contender
        owner = store.read_json(live[0]) if store.is_file(live[0]) else {}
        if owner.get("host") != me["host"] or _alive(int(owner.get("pid", -1))):
            break
        with contextlib.suppress(OSError):
            store.delete(live.pop(0))
    if live and live[0] != name:
        held = store.read_json(live[0]) if store.is_file(live[0]) else {}
        with contextlib.suppress(OSError):
            store.delete(name)
        raise LockedError(f"{store.display()}: another ccr {held.get('what', 'process')} started at the same "
                          f"moment (pid {held.get('pid')} on {held.get('host')}) and holds it; wait for it, or "
                          "use another --out")
    return name
