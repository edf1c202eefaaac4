"""Which Ray ccr talks to (ccr/distributed/cluster.py): requests it can never grant, addresses where nothing answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.cli import REPO, _sets


@pytest.mark.slow
@pytest.mark.parametrize("sets, needle", [
    (["resources.workers=4"], "4 training workers (resources.workers x resources.cpus_per_worker) needs 4 CPU"),
    (["resources.shards=64"], "64 gallery shards (resources.shards x resources.shard_cpus / shard_gpus) needs 64 CPU"),
    # each fits alone; together (rank 0 starts the shards while the workers hold their CPUs) they never would
    (["resources.workers=2", "resources.shards=2"], "2 training workers and 2 gallery shards (resources.workers x "
     "resources.cpus_per_worker + resources.shards x resources.shard_cpus / shard_gpus) needs 4 CPU"),
])
def test_resources_this_machine_can_never_grant_are_one_line(sets, needle, tiny_overrides, tmp_path):
    """On the Ray ccr starts for itself (which never grows) a request larger than the machine is refused
    before anything trains, naming the key; before, it waited for ever."""
    import os as _os

    env = {k: v for k, v in _os.environ.items() if k != "RAY_ADDRESS"}
    t = time.time()
    run = subprocess.run([sys.executable, "-m", "ccr.cli", "run", "--quiet", "--out", str(tmp_path / "o"),
                          *_sets([*tiny_overrides, "data.n_tasks=2", *sets])], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert run.returncode == 2 and needle in run.stderr, run.stderr[-1500:]
    assert time.time() - t < 120 and not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_ray_address_where_nothing_answers_is_one_line(command, tiny_overrides, tmp_path):
    """RAY_ADDRESS naming a cluster that is gone: before, ray.init retried for minutes printing its own warnings;
    now one line names the address, before a sweep's record or a study's files are written."""
    import socket

    with socket.socket() as s:  # a port on the loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    out = tmp_path / "o"
    if command == "run":
        argv = ["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", "resources.workers=2"])]
    else:
        spec = tmp_path / "s.yaml"
        spec.write_text("name: s\ngrid: {seed: [0]}\n")
        argv = ["sweep", str(spec), "--out", str(out), *_sets(tiny_overrides)]
    t = time.time()
    run = subprocess.run([sys.executable, "-m", "ccr.cli", *argv], capture_output=True, text=True, timeout=120,
                         env=env, cwd=REPO)
    assert run.returncode == 2, run.stderr[-1500:]
    assert run.stderr.strip().splitlines() == [
        f"ccr: error: no Ray cluster answers at '127.0.0.1:{port}' (RAY_ADDRESS): Connection refused. Start it "
        "(`ray start --head`, `ray up`), or unset RAY_ADDRESS to let ccr start a Ray of its own on this machine"]
    assert time.time() - t < 60 and not [f for f in out.rglob("*") if f.name != ".ccr.lock"]
