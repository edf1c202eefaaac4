"""The cluster check (scripts/cluster_check.py) and the cluster files: its teardown, against stand-in processes, ends in
bounded time and stops every process of the cluster it brought up (and nothing else), whatever `ray down` does;
the cluster files validate against Ray's schema and lock down the head."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cli import REPO

sys.path.insert(0, str(REPO / "scripts"))
try:
    import cluster_teardown
finally:
    sys.path.remove(str(REPO / "scripts"))

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


def _spawn(code: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def _alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


def test_teardown_stops_every_process_of_the_cluster_and_nothing_else(tmp_path):
    """Processes that carry the cluster's environment (as everything `ray start` launches does) are stopped, one
    that ignores SIGTERM with SIGKILL; a process of another Ray, or anything else, is left alone."""
    ours = {**os.environ, "CCR_SCRATCH": f"{tmp_path}/worker/scratch"}
    raylet, stubborn = _spawn("import time; time.sleep(120)", ours), _spawn(IGNORES_TERM, ours)
    other = _spawn("import time; time.sleep(120)", {**os.environ, "CCR_SCRATCH": "/elsewhere/scratch"})
    server = _spawn("import time; time.sleep(120)")
    try:
        time.sleep(0.5)  # the interpreters are up (and the stubborn one ignores SIGTERM)
        assert set(cluster_teardown.cluster_processes(tmp_path)) >= {raylet.pid, stubborn.pid}
        t = time.time()
        cluster_teardown.teardown(None, dict(os.environ), [server], work=tmp_path, grace=1.0)
        assert time.time() - t < 15
        for p in (raylet, stubborn, server):
            p.wait(timeout=5)
        assert _alive(other), "a process of another Ray was stopped"
        assert not cluster_teardown.cluster_processes(tmp_path)
    finally:
        for p in (raylet, stubborn, other, server):
            if _alive(p):
                p.kill()


def _fake_ray(tmp_path: Path, body: str) -> str:
    ray = tmp_path / "ray"
    ray.write_text("#!/bin/sh\n" + body)
    ray.chmod(0o755)
    return str(ray)


def test_the_cluster_is_stopped_before_ray_down_which_otherwise_waits_for_ever(tmp_path):
    """What hung the check: `ray down` polls until no node is left, while the head's autoscaler (a process of the
    cluster, sharing the state file on one machine) writes the nodes back as running. The stand-in `ray` waits
    as long as that process lives: after the teardown stopped it first, `ray down` returns at once."""
    ours = {**os.environ, "CCR_SCRATCH": f"{tmp_path}/head/scratch"}
    # detached (as `ray start` leaves it): no child of this test, so nothing keeps it as a zombie once stopped
    subprocess.run(f"{sys.executable} -c 'import time; time.sleep(120)' > /dev/null 2>&1 & echo $! > {tmp_path}/pid",
                   shell=True, env=ours, check=True)
    pid = int((tmp_path / "pid").read_text())
    ray = _fake_ray(tmp_path, f"while kill -0 {pid} 2>/dev/null; do sleep 0.2; done\necho 'No nodes remaining.'\n")
    (tmp_path / "c.yaml").write_text("cluster_name: c\n")
    try:
        time.sleep(0.5)
        assert pid in cluster_teardown.cluster_processes(tmp_path)
        t = time.time()
        cluster_teardown.teardown(tmp_path / "c.yaml", dict(os.environ), [], ray=ray, work=tmp_path, limit=30,
                                  grace=1.0)
        assert time.time() - t < 10
        assert "No nodes remaining." in (tmp_path / "ray_down.log").read_text()
        assert not Path(f"/proc/{pid}").exists()
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)


def test_a_ray_down_that_never_returns_is_stopped_at_its_limit(tmp_path):
    ray = _fake_ray(tmp_path, "echo started >> $(dirname $0)/called\nsleep 120\n")
    (tmp_path / "c.yaml").write_text("cluster_name: c\n")
    t = time.time()
    cluster_teardown.teardown(tmp_path / "c.yaml", dict(os.environ), [], ray=ray, work=tmp_path, limit=2,
                              grace=1.0)
    assert time.time() - t < 10 and (tmp_path / "called").read_text() == "started\n"
    assert not subprocess.run(["pgrep", "-f", f"{tmp_path}/ray"], capture_output=True, text=True).stdout.strip()


def test_cluster_yaml_validates_against_rays_schema():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert any("pip install" in c and "/home/ray/ccr" in c for c in cfg["setup_commands"])
    assert not any("[gpu]" in c for c in cfg["setup_commands"])  # faiss-gpu would fight faiss-cpu
    # data and weights come from a bucket, staged by each node: nothing is copied from the laptop but ccr and the token
    assert sorted(cfg["file_mounts"].values()) == [".", "~/.ray/auth_token"]


def test_the_cluster_check_runs_the_nodes_commands_with_its_own_interpreter(tmp_path):
    """Over SSH a login shell finds another python3 and ray on PATH than the virtual environment running the
    check: the cluster file it uses names this interpreter and its environment's ray."""
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import cluster_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    cfg = yaml.safe_load(cluster_check.cluster_file(tmp_path / "c.yaml").read_text())
    validate_config(prepare_config(cfg))
    ray_bin = str(Path(sys.executable).parent / "ray")
    assert cfg["setup_commands"][0].startswith(f"{sys.executable} -c ")
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all(f"{ray_bin} start" in c for c in starts)
    assert all(" ray stop" not in f" {c}" for c in cfg["head_start_ray_commands"])


@pytest.mark.parametrize("name", ["cluster.yaml", "scripts/cluster-local.yaml"])
def test_cluster_files_lock_down_the_head(name):
    """Token authentication on every node; the dashboard (job API) on the head's loopback only."""
    cfg = yaml.safe_load((REPO / name).read_text())
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert head and workers
    for c in head + workers:
        assert "RAY_AUTH_MODE=token" in c, c
    for c in head:
        host = c.split("--dashboard-host=")[1].split()[0]
        assert host in ("127.0.0.1", "localhost"), c
    assert "0.0.0.0" not in (REPO / name).read_text()
    assert any("auth_token" in str(k) for k in (cfg.get("file_mounts") or {})) or name != "cluster.yaml"
