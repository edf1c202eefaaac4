"""Taking down what scripts/cluster_check.py brought up, whatever failed before, in bounded time: `ray down`, then
every process of the cluster still running (found by the environment `ray start` gave it), then the check's own
servers. A module of its own so that tests can run it against stand-in processes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("/tmp/ccr-cluster")
RAY = shlex.quote(str(Path(sys.executable).parent / "ray"))  # the `ray` of the environment running the check
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cluster_processes(work: Path = WORK) -> list[int]:
    """Every process of the cluster this check brought up, whatever started it: Ray's own (gcs_server, raylets,
    dashboard, autoscaler monitor, workers) and what runs inside it (the job's `ccr sweep`), found by the
    environment `ray start` gave them (CCR_SCRATCH under this check's folder), not by name, so that no other
    Ray on the machine is touched."""
    me, found = os.getpid(), []
    marker = f"CCR_SCRATCH={work}/".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if marker in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def signal_all(pids: list[int], sig: int) -> None:
    """`sig` to each of `pids`, those already gone (or not ours) skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL what is left after `grace` seconds; returns the pids that had to be killed."""
    signal_all(pids, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    signal_all(left, signal.SIGKILL)
    return left


def ray_down(cluster: Path, env: dict, limit: float = 120.0, ray: str = RAY, work: Path = WORK) -> float:
    """`ray down -y`, bounded in time (its process group is killed at `limit`); returns its seconds. Its output
    goes to work/ray_down.log: a file, so no reader can wait on a pipe that a process it left behind holds open."""
    t = time.time()
    with open(work / "ray_down.log", "w") as out:
        proc = subprocess.Popen([*shlex.split(ray), "down", "-y", str(cluster)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            log(f"ray down did not return in {limit:.0f} s (see {work / 'ray_down.log'}); stopping it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.time() - t


def teardown(cluster: Path | None, env: dict, servers: list[subprocess.Popen | None], ray: str = RAY,
             work: Path = WORK, limit: float = 120.0, grace: float = 10.0) -> None:
    """Take down whatever this check started, whatever failed before: the cluster, then the S3 server and sshd.
    Bounded: about two and a half minutes at most.

    The cluster's own processes are stopped first, and `ray down` runs after. The other order hangs here:
    `ray down` begins with a bare `ray stop` on each node in an SSH login shell, where this environment's `ray`
    is not on PATH ("ray: command not found"), so the head's Ray runtime keeps running; and on one machine the
    head's autoscaler shares the local provider's state file (/tmp/ray/cluster-<name>.state) with `ray down`,
    writing both nodes back as running every few seconds while `ray down` waits, 5 s a poll, for none to be
    left. With the runtime stopped, `ray down` marks the nodes terminated and returns after one poll."""
    left = cluster_processes(work)
    if left:
        killed = stop(left, grace)
        log(f"stopped the cluster's {len(left)} process(es)" + (f" ({len(killed)} needed SIGKILL)" if killed else ""))
    try:
        if cluster is not None and cluster.exists():
            log(f"ray down took {ray_down(cluster, env, limit, ray, work):.0f} s")
    except Exception as e:  # teardown goes on: the servers below are stopped in any case
        log(f"ray down failed: {type(e).__name__}: {e}")
    left = cluster_processes(work)  # anything started while ray down ran
    if left:
        stop(left, grace)
    for proc in servers:  # each server, with the sessions it forked (sshd's connections), which leave its group
        if proc is not None and proc.poll() is None:
            stop([*children(proc.pid), proc.pid], grace)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out
