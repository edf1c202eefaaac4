"""Sweeps on a multi-node cluster with results in an S3-compatible store (moto on 127.0.0.1).

Each Ray node gets its own scratch folder (CCR_SCRATCH), as separate machines would: what a trial
writes must reach the bucket, a trial retried on another node must resume from the bucket, and
`ccr analyze` must work from the bucket alone.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from ccr.io.storage import Storage
from tests.conftest import TINY
from tests.trials import wait_for_checkpointed_trial

ray = pytest.importorskip("ray")


def test_storage_round_trip_on_s3(s3):
    st = Storage(s3.uri("ccr", "unit"))
    st.write_json("a/b.json", {"x": 1})
    st.append_line("log", "one")
    st.append_line("log", "two")
    assert st.read_json("a/b.json") == {"x": 1} and st.read_text("log") == "one\ntwo\n"
    assert st.files() == ["a/b.json", "log"] and st.child("a").files() == ["b.json"]
    assert st.is_file("a/b.json") and not st.is_file("a") and not st.exists("nope")
    with pytest.raises(FileNotFoundError):
        st.read_bytes("nope")
    assert "endpoint_override" not in st.display() and st.display() == "s3://ccr/unit"


def _summary_tables(path) -> str:
    return "\n".join((path / "summary.md").read_text().splitlines()[1:])  # the first line names the source


@pytest.mark.slow
def test_sweep_to_s3_survives_a_lost_node_and_uses_an_added_one(s3, tmp_path):
    from ray.cluster_utils import Cluster

    from ccr.analysis.html_report import analyze
    from ccr.distributed.tune import run_sweep
    from tests.test_sweep import write

    spec = write(tmp_path, {"grid": {"strategy.name": ["finetune", "lwf", "ewc"]}, "max_failures": 2})
    # long enough tasks (epochs=40) that a node can be removed between a trial's first checkpoint and its end
    sets = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "train.threads=1", "train.epochs=40"]
    uri = s3.uri("ccr", "sweep")
    scratch = {n: tmp_path / f"scratch-{n}" for n in ("head", "b", "c")}
    # the head offers no CPU (as on a real cluster whose head only coordinates): trials run on b, then on
    # c, so which node runs what does not depend on how fast each trial happens to be
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "env_vars": {"CCR_SCRATCH": str(scratch["head"])}})
    errors: list[BaseException] = []
    try:
        # the driver joins before node b exists, so that it is attached to the head's raylet (older Ray
        # picks any raylet on this host, and a driver on node b would die with it)
        ray.init(address=cluster.address, log_to_driver=False)
        node_b = cluster.add_node(num_cpus=1, env_vars={"CCR_SCRATCH": str(scratch["b"])})

        def sweep():
            try:
                run_sweep(spec, sets, uri)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        driver = threading.Thread(target=sweep)
        driver.start()
        runs = Storage(uri).child("runs")
        victim = wait_for_checkpointed_trial(runs, node_b.node_id, timeout=240, poll=0.05,
                                             still_running=driver.is_alive)
        assert victim, "no trial on node b reached its first checkpoint"
        cluster.remove_node(node_b, allow_graceful=False)  # the node is lost mid-trial
        # and one is added, of 2 CPUs: the trials left, and the local sweep below, run two at a time
        node_c = cluster.add_node(num_cpus=2, env_vars={"CCR_SCRATCH": str(scratch["c"])})
        driver.join(timeout=400)
        assert not driver.is_alive() and not errors, errors

        res = {f.split("/")[0]: runs.read_json(f) for f in runs.files() if f.endswith("/results.json")}
        assert len(res) == 3 and all(r["status"] == "complete" for r in res.values())
        starts = {n: runs.read_text(f"{n}/starts.log").splitlines() for n in res}
        assert len(starts[victim]) == 2, starts  # started on node b, retried elsewhere
        assert starts[victim][0].split()[1] == node_b.node_id and starts[victim][1].split()[1] != node_b.node_id
        assert res[victim]["resumes"] and res[victim]["resumes"][0] >= 0  # from its checkpoint in the bucket
        assert any(line.split()[1] == node_c.node_id for s in starts.values() for line in s), starts
        assert not (tmp_path / "sweep").exists() and not list(tmp_path.glob("**/results.json"))

        # the same sweep into the same bucket again: Tune's experiment is restored from the bucket, nothing reruns
        run_sweep(spec, sets, uri)
        assert {n: runs.read_text(f"{n}/starts.log").splitlines() for n in res} == starts

        # the same sweep with local storage: the same numbers, the killed trial included
        run_sweep(spec, sets, tmp_path / "local")
        differ = {}

        def numbers(r):  # every metric but the indexing wall-clock time
            return {k: v for k, v in r["metrics"].items() if not k.endswith("seconds")}

        for name, r in res.items():
            local = json.loads((tmp_path / "local" / "runs" / name / "results.json").read_text())
            if r["recall"] != local["recall"] or numbers(r) != numbers(local):
                differ[name] = {"victim": name == victim, "resumes": (r["resumes"], local["resumes"]),
                                "t2i/R@1": (r["metrics"]["t2i/R@1"], local["metrics"]["t2i/R@1"]),
                                "threads": (r["provenance"]["torch_threads"], local["provenance"]["torch_threads"])}
        assert not differ, differ
    finally:
        ray.shutdown()
        cluster.shutdown()

    for d in scratch.values():  # nothing on the nodes' disks is needed for analysis
        shutil.rmtree(d, ignore_errors=True)
    analyze(uri, tmp_path / "an-s3")
    analyze(tmp_path / "local", tmp_path / "an-local")
    assert _summary_tables(tmp_path / "an-s3") == _summary_tables(tmp_path / "an-local")
    an = Storage(uri).child("analysis")
    analyze(uri)  # default output: next to the results, in the bucket
    assert an.is_file("report.html") and an.is_file("summary.md")


def test_an_object_as_out_and_an_unreachable_analyze_are_one_line(s3, tmp_path, capsys):
    from ccr.cli import main
    from ccr.io.storage import StorageError, open_storage

    Storage(s3.uri("ccr", "")).write_text("an-object", "not a folder")
    with pytest.raises(StorageError, match="is an object, not a prefix"):
        open_storage(s3.uri("ccr", "an-object"))
    dead = "s3://ccr/x?endpoint_override=127.0.0.1:9&scheme=http&connect_timeout=1&request_timeout=1"
    assert main(["analyze", dead]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccr: error: ") and len(err.strip().splitlines()) == 1, err[-800:]


def test_two_starts_at_the_same_moment_on_an_object_store_one_proceeds(s3, tmp_path):
    """The lock on an object store: starts at the same instant each write a claim of their own; exactly one
    proceeds (before: both did in 4 of 5 tries, and results.json and config.yaml then disagreed)."""
    import subprocess
    import sys

    from tests.s3server import CREDENTIALS

    uri = s3.uri("ccr", "locked")
    # both processes start contending at the same instant (a time given to both), after their imports
    code = ("import sys, time; from ccr.io.storage import Storage; from ccr.io.locks import exclusive, LockedError\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    with exclusive(Storage(sys.argv[1]), 'run'):\n        time.sleep(3)\n"
            "except LockedError as e:\n    print(e); sys.exit(3)\n")
    env = {**__import__("os").environ, **CREDENTIALS}
    for _ in range(3):
        at = str(time.time() + 8)
        procs = [subprocess.Popen([sys.executable, "-c", code, uri, at], stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        codes = sorted(p.wait(timeout=60) for p in procs)
        assert codes == [0, 3], codes
    assert not Storage(uri).is_file(".ccr.lock") and not Storage(uri).files(".ccr.claims")


def test_an_object_store_that_dies_mid_run_is_one_line(tmp_path):
    """The S3 server killed (SIGKILL) while a study writes to it: one line naming what could not be written,
    exit 1, no chained traceback (before: 99 lines ending in the lock's own release)."""
    import os
    import socket
    import subprocess
    import sys

    from tests.conftest import TINY
    from tests.s3server import CREDENTIALS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **CREDENTIALS}
    server = subprocess.Popen([sys.executable, "-m", "tests.s3server", "--port", str(port), "--bucket", "ccr"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert "s3 server on" in server.stdout.readline()
        uri = f"s3://ccr/dies?endpoint_override=127.0.0.1:{port}&scheme=http"
        sets = [a for o in [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.n_tasks=3"] for a in ("--set", o)]
        run = subprocess.Popen([sys.executable, "-m", "ccr.cli", "run", "--quiet", "--out", uri, *sets],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        store, deadline = Storage(uri), time.time() + 120
        while not store.files("checkpoints") and time.time() < deadline:  # task 1 is written: kill it mid-run
            time.sleep(0.2)
        assert store.files("checkpoints")
    finally:
        server.kill()
        server.wait()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err[-2000:]
    assert err.startswith("ccr: error: cannot write s3://ccr/dies/") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_sweep_on_a_dataset_and_weights_in_the_bucket_stages_once_per_node(s3, tmp_path, monkeypatch):
    """A Karpathy-layout dataset of real-size JPEGs and a pretrained CLIP folder live in the bucket only. A
    2-trial sweep on a cluster whose nodes have separate scratch and cache folders reads them by URI: each node
    stages each input once, the images are decoded once in the whole cluster (data.image_cache=shared: the
    driver's node decodes and uploads, the trials' nodes download), and the results equal the same sweep on
    local paths."""
    from ray.cluster_utils import Cluster

    from ccr.distributed.tune import run_sweep
    from ccr.io.staging import events
    from tests.karpathy_fixture import make_photos, upload_karpathy
    from tests.pretrained_fixture import make_complete
    from tests.test_sweep import write

    files = make_photos(tmp_path / "coco", per_task=100, test_per_task=20)
    clip = make_complete(tmp_path / "clip", "clip", image_size=16)
    by_uri = upload_karpathy(files, Storage(s3.uri("ccr", "datasets/coco")))
    weights = Storage(s3.uri("ccr", "weights/clip-tiny"))
    weights.upload_dir(clip, "")
    spec = write(tmp_path, {"grid": {"strategy.name": ["finetune", "lwf"]}, "max_failures": 0})
    common = ["data.kind=karpathy", "data.image_cache=shared", "train.epochs=2", "train.batch_size=16",
              "train.warmup_steps=1", "train.threads=1", "eval.anatomy=false"]
    sets = [*common, *(f"data.{k}={v}" for k, v in by_uri.items()), f"model.pretrained={weights.uri}"]
    nodes = ("head", "b", "c")
    env = {n: {"CCR_SCRATCH": str(tmp_path / f"scratch-{n}"), "CCR_CACHE": str(tmp_path / f"cache-{n}")}
           for n in nodes}
    for k, v in env["head"].items():  # the driver is on the head
        monkeypatch.setenv(k, v)
    uri = s3.uri("ccr", "data-sweep")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "env_vars": env["head"]})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        ids = {n: cluster.add_node(num_cpus=1, env_vars=env[n]).node_id for n in ("b", "c")}
        assert run_sweep(spec, sets, uri, quiet=True) == 0
        runs = Storage(uri).child("runs")
        res = {f.split("/")[0]: runs.read_json(f) for f in runs.files() if f.endswith("/results.json")}
        assert len(res) == 2 and all(r["status"] == "complete" for r in res.values())
        ran = {runs.read_text(f"{n}/starts.log").split()[1] for n in res}
        # the local-path twin, on the same cluster (its own output; the nodes' caches are reused or extended)
        local_sets = [*common, *(f"data.{k}={files[k]}" for k in by_uri), f"model.pretrained={clip}"]
        assert run_sweep(spec, local_sets, tmp_path / "local", quiet=True) == 0
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert ran and ran <= set(ids.values())

    def did(node: str, kind: str, what: str | None = None) -> int:
        return sum(1 for e in events(env[node]["CCR_CACHE"]) if e["event"] == kind and
                   (what is None or what in (e.get("what"), e.get("uri"))))

    inputs = ["data.path", "data.images", "data.tasks_file", "model.pretrained"]
    # every node that read the data staged each input once; the trial nodes never copied the images (their
    # pixels came from the shared cache), the head copied them to decode them
    assert [did("head", "staged", w) for w in inputs] == [1, 1, 1, 1], events(env["head"]["CCR_CACHE"])
    for node in (n for n in ("b", "c") if ids[n] in ran):
        assert [did(node, "staged", w) for w in inputs] == [1, 0, 1, 1], (node, events(env[node]["CCR_CACHE"]))
    # the images were decoded once in the cluster, by the driver's node, which uploaded the cache to the sweep's
    # storage; every trial node downloaded it (the local twin's shared cache is its own, under tmp_path/local)
    uri_decodes = [e for n in nodes for e in events(env[n]["CCR_CACHE"])
                   if e["event"] == "decoded" and e.get("into") == "cache"]
    assert did("head", "uploaded") == 2 and len(uri_decodes) == 2  # the bucket sweep's and the local twin's
    for node in (n for n in ("b", "c") if ids[n] in ran):
        assert did(node, "decoded") == 0 and did(node, "downloaded") >= 1
    assert Storage(uri).child("cache").files() and not [p for n in nodes for p in
                                                         (tmp_path / f"cache-{n}").rglob("*.partial-*")]
    assert res and all(r["config"]["data"]["images"] == by_uri["images"] for r in res.values())  # URIs kept

    def numbers(r):
        return {k: v for k, v in r["metrics"].items() if k != "index_cost/seconds" and "seconds" not in k}

    for name, r in res.items():
        local = json.loads((tmp_path / "local" / "runs" / name / "results.json").read_text())
        assert r["recall"] == local["recall"] and numbers(r) == numbers(local), name
