"""Datasets and weights by URI (ccr.io.staging): staged once per node and content, never read half-staged, read
by every process from the staged copy; the decode check and the pixel store in one pass; `ccr data`; fail fast
on inputs that cannot be read (shard actors, sweep trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ccr.cli import main
from ccr.data import load_dataset
from ccr.io.staging import events, stage
from ccr.io.storage import Storage
from ccr.study.configure import load_config
from tests.karpathy_fixture import make_karpathy, upload_karpathy

KEYS = ("path", "images", "tasks_file")


def _upload(s3, local: dict[str, Path], prefix: str) -> dict[str, str]:
    """The fixture's files in the bucket: {data key: URI}."""
    return upload_karpathy(local, Storage(s3.uri("ccr", prefix)))


def _cfg(where: dict, *extra: str):
    return load_config(None, ["data.kind=karpathy", *(f"data.{k}={where[k]}" for k in KEYS), *extra])


def _same_dataset(a, b) -> None:
    assert a.image_names == b.image_names and a.captions == b.captions
    assert np.array_equal(a.image_task, b.image_task) and np.array_equal(a.image_split, b.image_split)
    ids = np.arange(a.n_images)
    assert torch.equal(a.images.load(ids), b.images.load(ids))


def test_a_dataset_in_a_bucket_is_staged_once_per_content_and_read_from_the_copy(s3, tmp_path, monkeypatch):
    local = make_karpathy(tmp_path / "src")
    uris = _upload(s3, local, "staging/one")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(_cfg(uris))
    _same_dataset(ds, load_dataset(_cfg({k: str(v) for k, v in local.items()},
                                        f"data.cache_dir={tmp_path / 'local-cache'}")))
    staged = [e for e in events() if e["event"] == "staged"]
    assert sorted(e["what"] for e in staged) == ["data.images", "data.path", "data.tasks_file"]
    assert next(e for e in staged if e["what"] == "data.images")["files"] == 24
    # every image the dataset reads is in the node's cache, none in the bucket's own namespace
    assert all(str(tmp_path / "cache" / "staged") in p for p in ds.sources["paths"])

    gets = s3.gets
    load_dataset(_cfg(uris))  # the next study on this node: listings only, no object read, nothing staged again
    assert s3.gets == gets and len([e for e in events() if e["event"] == "staged"]) == 3
    assert len([e for e in events() if e["event"] == "decoded"]) == 2  # one pass per load: check and pixels

    # an object changed in the bucket: its listing differs, so it is staged anew, and the dataset follows it
    tasks = json.loads(local["tasks_file"].read_text())
    tasks = {k: ("vehicle" if v == "animal" else "animal") for k, v in tasks.items()}
    time.sleep(1.1)  # S3 keeps modification times to the second
    Storage(uris["tasks_file"]).write_text("", json.dumps(tasks))
    swapped = load_dataset(_cfg(uris))
    assert len([e for e in events() if e["event"] == "staged"]) == 4
    assert [str(t) for t in swapped.image_task] == [("vehicle" if t == "animal" else "animal") for t in ds.image_task]


def test_nothing_at_a_uri_and_an_unwritable_cache_are_one_line(s3, tmp_path, monkeypatch, capsys):
    local = make_karpathy(tmp_path / "src")
    uris = _upload(s3, local, "staging/two")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    sets = [f"--set=data.{k}={v}" for k, v in uris.items()]
    nope = s3.uri("ccr", "staging/two/images-nope")
    assert main(["data", "--set=data.kind=karpathy", *sets, f"--set=data.images={nope}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccr: error: data.images: nothing at s3://ccr/staging/two/images-nope") and \
        "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["data", "--set=data.kind=karpathy", *sets, "--set=data.cache_dir=/proc/ccr-cannot"]) == 2
    err = capsys.readouterr().err
    assert "cannot stage s3://ccr/staging/two/" in err and "/proc/ccr-cannot" in err and len(err.splitlines()) == 1


STAGER = """
import sys
from ccr.io.staging import stage
stage(sys.argv[1], "data.images")
print("staged", flush=True)
"""


def test_a_node_killed_while_staging_leaves_nothing_that_is_read(s3, tmp_path):
    """kill -9 of the process staging a folder mid-copy: the next staging on the node removes the partial copy
    and stages it whole; nothing reads a folder without the marker written last."""
    src = Storage(s3.uri("ccr", "staging/kill"))
    rng = np.random.default_rng(0)
    blobs = {f"f{i:03d}.bin": rng.integers(0, 255, 20_000, dtype=np.uint8).tobytes() for i in range(120)}
    for name, b in blobs.items():
        src.write_bytes(name, b)
    env = {**os.environ, "CCR_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
    s3.get_delay = 0.1  # 120 objects at 0.1 s each on pyarrow's 8 I/O threads: ~1.5 s of copying to interrupt
    try:
        proc = subprocess.Popen([sys.executable, "-c", STAGER, src.uri], env=env, stdout=subprocess.PIPE)
        staged = tmp_path / "cache" / "staged"
        deadline = time.time() + 60
        while time.time() < deadline and not list(staged.glob("*/.partial-*/data/*.bin")):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = list(staged.glob("*/.partial-*"))
        assert partial and not list(staged.glob("*/*/.ccr-complete")), "the copy was not interrupted"
        assert len(list(partial[0].glob("data/*.bin"))) < len(blobs)
    finally:
        s3.get_delay = 0.0
    got = stage(src.uri, "data.images", tmp_path / "cache")
    assert not list(staged.glob("*/.partial-*")) and (got.folder / ".ccr-complete").is_file()
    assert {p.name: p.read_bytes() for p in got.local.iterdir()} == blobs


def test_processes_of_one_node_stage_once(s3, tmp_path):
    src = Storage(s3.uri("ccr", "staging/race"))
    for i in range(40):
        src.write_bytes(f"d/{i}.bin", bytes([i]) * 5000)
    env = {**os.environ, "CCR_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
    s3.get_delay = 0.05
    try:
        procs = [subprocess.Popen([sys.executable, "-c", STAGER, src.uri], env=env, stdout=subprocess.PIPE)
                 for _ in range(3)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        s3.get_delay = 0.0
    assert all(o.strip() == b"staged" for o in outs)
    assert [e["event"] for e in events(tmp_path / "cache")] == ["staged"]


def test_a_changed_object_is_staged_alone_and_the_copies_nothing_reads_are_removed(s3, tmp_path):
    """One object of a folder changes, three times: each staging copies that object only (the others are linked
    from the previous copy), and the previous copies, which no process reads any more, are removed."""
    src = Storage(s3.uri("ccr", "staging/changes"))
    for i in range(60):
        src.write_bytes(f"img/{i:03d}.bin", bytes([i]) * 3000)
    cache = tmp_path / "cache"
    env = {**os.environ, "CCR_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parents[1])}
    for change in range(4):  # each staging in a process of its own, as each `ccr run` is
        if change:
            time.sleep(0.01)
            src.write_bytes(f"img/{change:03d}.bin", bytes([200 + change]) * 3000)
        out = subprocess.run([sys.executable, "-c", STAGER, src.uri], env=env, capture_output=True, timeout=120)
        assert out.stdout.strip() == b"staged", out.stderr[-2000:]
    copied = [e["copied"] for e in events(cache) if e["event"] == "staged"]
    assert copied == [60, 1, 1, 1]
    (base,) = [d for d in (cache / "staged").iterdir() if d.is_dir()]
    copies = [d for d in base.iterdir() if d.is_dir()]
    assert len(copies) == 1  # the earlier three are gone
    files = list(copies[0].rglob("*.bin"))
    assert len(files) == 60 and (copies[0] / "data" / "img" / "003.bin").read_bytes() == bytes([203]) * 3000


def test_a_file_deleted_from_a_staged_copy_is_staged_again(s3, tmp_path, monkeypatch, caplog):
    local = make_karpathy(tmp_path / "src", per_task=6, test_per_task=2)
    uris = _upload(s3, local, "staging/deleted")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    first = load_dataset(_cfg(uris))
    staged = stage(uris["images"], "data.images").local
    victim = next(p for p in staged.rglob("*") if p.is_file())
    victim.unlink()
    again = load_dataset(_cfg(uris))  # not "missing image files" for ever: the file is staged again
    _same_dataset(first, again)
    assert victim.is_file() and "missing or changed in the staged copy" in caplog.text
    assert [e["copied"] for e in events(tmp_path / "cache") if e.get("what") == "data.images"] == [12, 1]


def test_ccr_data_clean_removes_copies_no_process_reads(s3, tmp_path, monkeypatch, capsys):
    src = Storage(s3.uri("ccr", "staging/clean"))
    src.write_bytes("a.bin", b"x" * 5000)
    held = Storage(s3.uri("ccr", "staging/clean-held"))
    held.write_bytes("b.bin", b"y" * 7000)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CCR_CACHE", str(cache))
    env = {**os.environ, "CCR_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-c", STAGER, src.uri], env=env, check=True, timeout=120)  # a run that ended
    mine = stage(held.uri, "data.images")  # this process reads this one
    (cache / "staged" / "x" / ".partial-abc-1").mkdir(parents=True)  # left by a killed staging
    assert main(["data", "--clean", "--set", f"data.cache_dir={cache}"]) == 0
    assert "removed 2 staged copies and leftovers no process reads (0.0 MB)" in capsys.readouterr().out
    assert mine.local.is_dir() and [p.name for p in cache.rglob("*.bin")] == ["b.bin"]


@pytest.mark.parametrize("case, needle", [
    ("key with //", "the object s3://ccr/staging/odd-11/images//odd.jpg cannot be a file on disk"),
    ("CCR_STAGE_THREADS=abc", "CCR_STAGE_THREADS must be a whole number from 1 to 1024, got 'abc'"),
    ("CCR_STAGE_THREADS=1e3", "got '1e3'"),
])
def test_odd_keys_and_settings_are_one_line(case, needle, s3, tmp_path, monkeypatch, capsys):
    local = make_karpathy(tmp_path / "src", per_task=4, test_per_task=2)
    uris = _upload(s3, local, f"staging/odd-{len(case)}")
    if case == "key with //":
        import boto3

        boto3.client("s3", endpoint_url=f"http://{s3.endpoint}").put_object(
            Bucket="ccr", Key=f"staging/odd-{len(case)}/images//odd.jpg", Body=b"x")
    else:
        monkeypatch.setenv(*case.split("="))
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    sets = ["--set=data.kind=karpathy", *(f"--set=data.{k}={v}" for k, v in uris.items())]
    assert main(["data", *sets]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_file_uris_and_an_unwritable_image_cache(tmp_path, monkeypatch, caplog):
    local = make_karpathy(tmp_path / "src", per_task=4, test_per_task=2)
    plain = load_dataset(_cfg({k: str(v) for k, v in local.items()}, f"data.cache_dir={tmp_path / 'c'}"))
    (tmp_path / "file").write_text("not a folder")
    ds = load_dataset(_cfg({k: f"file://{v}" for k, v in local.items()}, "data.image_cache=true",
                           f"data.cache_dir={tmp_path / 'file' / 'cache'}"))
    _same_dataset(plain, ds)
    assert "cannot write the decoded-image cache" in caplog.text


def card_sizes(folder: Path) -> list[tuple[int, int]]:
    from PIL import Image

    return [Image.open(p).size for p in sorted(folder.rglob("*.*"))]


def test_ccr_data_prints_the_card_of_a_dataset_in_a_bucket(s3, tmp_path, monkeypatch, capsys):
    local = make_karpathy(tmp_path / "src", per_task=10, test_per_task=3)
    entries = json.loads(local["path"].read_text())
    entries["images"].append({"filename": "stray.jpg", "split": "train", "sentences": [{"raw": "x"}]})
    local["path"].write_text(json.dumps(entries))  # an image no task names: left out, and said so
    uris = _upload(s3, local, "staging/card")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    sets = ["--set=data.kind=karpathy", *(f"--set=data.{k}={v}" for k, v in uris.items())]
    assert main(["data", *sets]) == 0
    out = capsys.readouterr().out
    assert "dataset (karpathy): 20 images, 40 captions, 2 tasks" in out and "dataset dataset" not in out
    assert "animal" in out and "left out: 1 without a task" in out
    assert "captions per image: min 2, median 2, max 2" in out
    sizes = card_sizes(local["images"])
    assert f"image sizes: width {min(w for w, _ in sizes)}-{max(w for w, _ in sizes)}" in out
    assert "data.images: s3://ccr/staging/card/images -> staged at " + str(tmp_path / "cache" / "staged") in out
    assert main(["data", "--json", *sets]) == 0
    card = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in card["tasks"]}
    assert rows["animal"]["test images"] == 3 and rows["animal"]["train images"] == 7
    assert rows["animal"]["test captions"] == 6 and card["staged"]["images"]["files"] == 20
    # the first problem: exit 2, one line
    assert main(["data", *sets, "--set=eval.min_test_items=5"]) == 2
    assert "fewer than 5 test images" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trial_that_cannot_read_its_inputs_fails_once_and_fails_the_sweep(s3, tmp_path, monkeypatch, capsys):
    """The driver can read the dataset (so the sweep starts) but the trials' node cannot stage it: the trial is
    recorded failed with that error, Tune's retry does not try again, and `ccr sweep` exits 1 naming error.txt."""
    import ray

    from ccr.distributed.tune import run_sweep
    from tests.test_sweep import tiny_sets, write

    local = make_karpathy(tmp_path / "src")
    uris = _upload(s3, local, "staging/trial")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "driver-cache"))
    spec = write(tmp_path, {"grid": {"seed": [0]}, "max_failures": 2})
    sets = [*(s for s in tiny_sets(tmp_path) if not s.startswith("data.")), "data.kind=karpathy",
            *(f"data.{k}={v}" for k, v in uris.items()), "model.image.image_size=16", "model.image.patch_size=8"]
    ray.init(address="local", num_cpus=2, runtime_env={"env_vars": {"CCR_CACHE": "/proc/ccr-cannot"}},
             log_to_driver=False)
    try:
        assert run_sweep(spec, sets, tmp_path / "out", quiet=True) == 1
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert "ccr: 1 of 1 trials failed; their errors are in:" in err and "error.txt" in err
    (run,) = (tmp_path / "out" / "runs").iterdir()
    assert "cannot stage s3://ccr/staging/trial" in (run / "error.txt").read_text()
    assert len((run / "starts.log").read_text().splitlines()) == 1  # retried by Tune, not run again
    status = json.loads((tmp_path / "out" / "sweep_status.json").read_text())
    assert "not retried (a retry meets the same error, met on node" in next(iter(status["failed"].values()))


def test_a_gallery_shard_that_cannot_read_its_inputs_fails_before_task_1(ray_local, tmp_path, tiny_cfg):
    """The shard actors are built and checked when the pool is made: one line naming the node and the path,
    not a poll of a restarting actor after task 1 has trained. (A shard reads no dataset: the driver hands it its
    items; it reads the study's tokenizer and weights, here a tokenizer folder that is not there.)"""
    from ccr.distributed.shards import ShardPool

    cfg = tiny_cfg("resources.shards=2", "resources.shard_cpus=0.5")
    started = time.time()
    with pytest.raises(Exception, match=r"gallery shard \d on node [\d.]+ cannot start \(and 1 more shard\(s\)\): "
                                        r"the study's tokenizer is not in .*nope"):
        ShardPool(cfg, tmp_path / "nope")
    assert time.time() - started < 60


def test_a_sweep_whose_dataset_cannot_be_read_stops_before_any_trial(ray_local, tmp_path, capsys):
    from tests.test_sweep import tiny_sets, write

    spec = write(tmp_path, {"grid": {"seed": [0, 1]}})
    sets = [f"--set={s}" for s in tiny_sets(tmp_path)]
    assert main(["sweep", str(spec), *sets, "--set=data.kind=karpathy", f"--set=data.path={tmp_path}/no.json",
                 f"--set=data.images={tmp_path}", f"--set=data.tasks_file={tmp_path}/no.json",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "ccr: error: dataset file (data.path) not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sweep.yaml").exists()


def test_precomputed_features_and_visual_genome_from_a_bucket_equal_their_local_loads(s3, tmp_path, monkeypatch):
    """Every data.* location of the other layouts takes a URI: the precomp folder, Visual Genome's JSON folder,
    image folder and task map; what is loaded equals the local load."""
    from tests.data_fixtures import make_precomp, make_visual_genome

    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    pc = make_precomp(tmp_path / "pc")
    vg = make_visual_genome(tmp_path / "vg")
    pc_store, vg_store = Storage(s3.uri("ccr", "layouts/pc")), Storage(s3.uri("ccr", "layouts/vg"))
    pc_store.upload_dir(pc["path"], "")
    vg_store.upload_dir(vg["path"], "")
    cases = {
        "precomp": ({"path": pc["path"], "tasks_file": pc["tasks_file"]},
                    {"path": pc_store.uri, "tasks_file": pc_store.child("tasks.json").uri}),
        "visual_genome": ({"path": vg["path"], "images": vg["images"], "task_map": vg["task_map"]},
                          {"path": vg_store.uri, "images": vg_store.child("images").uri,
                           "task_map": vg_store.child("task_map.json").uri}),
    }
    for kind, (local, remote) in cases.items():
        common = [f"data.kind={kind}", "data.test_per_task=3", "data.val_per_task=2", "model.image.image_size=16",
                  "model.image.patch_size=4"]
        a = load_dataset(load_config(None, [*common, *(f"data.{k}={v}" for k, v in local.items()),
                                            f"data.cache_dir={tmp_path / 'local-cache'}"]))
        b = load_dataset(load_config(None, [*common, *(f"data.{k}={v}" for k, v in remote.items())]))
        _same_dataset(a, b)
        prefix = Storage(remote["path"]).display()
        staged = {e["what"] for e in events() if e["event"] == "staged" and e["uri"].startswith(prefix)}
        assert staged == {f"data.{k}" for k in remote}, (kind, staged)
    # Visual Genome's data.path holds the JSON files and, beside them, the images: only the files are staged
    # through it (the images come through data.images), not the images twice
    (vg_path,) = [e for e in events() if e["event"] == "staged" and e["what"] == "data.path"
                  and e["uri"].endswith("layouts/vg")]
    assert vg_path["files"] == 4 == len([f for f in vg["path"].iterdir() if f.is_file()])
