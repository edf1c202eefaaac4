"""The faults a second round of misuse found (issue 26): what ccr may delete, results it would mislabel,
inputs that would train on wrong numbers, sizes and requests that cannot work, damaged caches and records,
sweep files YAML reads otherwise, and analyses of mixed results. Each case is fed as a user would, with the
message, the exit code and what is kept. The first round's cases are in tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ccr.cli import main
from ccr.config import ConfigError
from ccr.study import checkpoint_path
from tests.test_analysis import fake_result
from tests.test_bad_input import REPO, _sets


def test_an_empty_out_is_refused_and_a_users_folder_loses_nothing(tiny_overrides, tmp_path, capsys, monkeypatch):
    """`--out ""` (an unset $OUT) is an error; in a folder that is not a ccr output, ccr removes nothing it did
    not write: the user's own tokenizer/ and *.tmp files stay, and a foreign tokenizer/ is refused, not replaced."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--out", "", *_sets(tiny_overrides)]) == 2
    assert "--out is empty (an unset variable?)" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / ".draft.tmp").write_text("my draft")
    (mine / "notes" / "a.txt").write_text("keep")
    assert main(["run", "--quiet", "--out", str(mine), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert (mine / ".draft.tmp").read_text() == "my draft" and (mine / "notes" / "a.txt").read_text() == "keep"
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    (other / "tokenizer" / "vocab.txt").write_text("my vocabulary")
    assert main(["run", "--quiet", "--out", str(other), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 2
    assert "is not a tokenizer ccr wrote" in capsys.readouterr().err
    assert (other / "tokenizer" / "vocab.txt").read_text() == "my vocabulary"


def test_a_checkpoint_of_another_study_is_refused_and_an_older_config_is_the_same_study(tiny_overrides, tmp_path,
                                                                                       capsys):
    """Resume checks the config a checkpoint was made with (config.yaml deleted, or a checkpoint copied in); a
    config.yaml written before keys existed (they are absent, at their defaults) is the same study."""
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    base = [*tiny_overrides, "data.n_tasks=2", "train.threads=1"]
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 0
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    order = json.loads((a / "results.json").read_text())["task_order"]
    # b's first checkpoint copied into a, whose own last checkpoint and results are gone
    checkpoint_path(a, 1, order).unlink()
    (a / "results.json").unlink()
    checkpoint_path(a, 0, order).write_bytes(checkpoint_path(b, 0, order).read_bytes())
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 2
    assert "made by a study with a different config (train.lr)" in capsys.readouterr().err
    # an older ccr's config.yaml: without keys added since (at their defaults here)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    for sec, key in (("model", "pretrained"), ("model", "adapter"), ("eval", "transfer"), ("eval", "control"),
                     ("data", "control_per_task")):
        del cfg[sec][key]
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    (b / "results.json").unlink()
    checkpoint_path(b, 1, order).unlink()
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    assert json.loads((b / "results.json").read_text())["resumes"] == [0]
    # a key that differs is named
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.02"])]) == 2
    assert "holds a study with a different config (train.lr)" in capsys.readouterr().err


def test_grad_accum_steps_across_epochs(tiny_cfg, tmp_path):
    """train.grad_accum=4 with 3 batches per epoch: the steps count over the task (2 epochs: 6 batches, 2
    steps, the last over 2 batches), never 0 steps and an untrained model."""
    from ccr.study import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.grad_accum=4", "train.epochs=2"), tmp_path / "o",
                progress=False).run()
    assert res["train"][0]["steps"] == 2
    plain = Study(tiny_cfg("data.n_tasks=1", "train.epochs=2"), tmp_path / "p", progress=False).run()
    assert plain["train"][0]["steps"] == 6


def test_precomputed_features_that_are_not_finite_and_captions_with_unicode_separators(tmp_path):
    from ccr.configure import load_config
    from ccr.data import DataError, load_dataset
    from tests.data_fixtures import make_precomp

    paths = make_precomp(tmp_path / "p")
    caps = (paths["path"] / "train_caps.txt").read_text().split("\n")
    caps[0] = caps[0] + " \u2028 and \x85 more \x0c"  # separators str.splitlines would split on
    (paths["path"] / "train_caps.txt").write_text("\n".join(caps))
    cfg = load_config(None, ["data.kind=precomp", f"data.path={paths['path']}",
                             f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'c'}"])
    ds = load_dataset(cfg)
    assert "\u2028" in ds.captions[0] and len(ds.captions) == 5 * ds.n_images
    test = np.load(paths["path"] / "test_ims.npy")
    test[3, 1] = np.nan
    test[7, 0] = np.inf
    np.save(paths["path"] / "test_ims.npy", test)
    with pytest.raises(DataError, match=r"test_ims.npy: 2 image\(s\) have NaN or infinite values \(rows 3, 7\)"):
        load_dataset(cfg)


def test_16_bit_images_are_scaled_not_white(tmp_path):
    from PIL import Image

    from ccr.data.pixels import load_image_file

    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = load_image_file(tmp_path / "g16.png", 32)
    assert 120 < x.mean() < 135 and x.min() < 10 and x.max() > 245  # a gradient, as the 16-bit values say


def test_report_escapes_every_field_of_a_result(tmp_path):
    """report.html is made from results.json files anyone could have written: strategy, policy, device,
    versions and thread counts reach the page as text, never as markup."""
    from ccr.analysis.html_report import analyze

    bad = "<script>alert(1)</script>"
    res = fake_result(bad, 0, 20.0, 5.0)
    res["provenance"] = {"device": bad, "torch_threads": 1, "versions": {"ccr": bad, "torch": bad}, "host": bad,
                         "git": {"commit": bad}}
    res["by_policy"][bad] = res["by_policy"]["reindex"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(res))
    res["provenance"]["torch_threads"] = bad  # not a number: this one is named and skipped, in escaped text
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path)
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "torch_threads" in page


def test_analysis_of_runs_of_mixed_configs_and_versions(tiny_cfg, tmp_path):
    """A config key some results lack (written by another ccr version or source) is a missing value in the
    tables and plots, never a crash: the analysis completes and writes its report."""
    from ccr.analysis.html_report import analyze
    from ccr.study import Study

    for name, lr in (("a", 0.003), ("b", 0.004), ("c", 0.005)):
        Study(tiny_cfg("data.n_tasks=2", "train.epochs=1", f"train.lr={lr}"), tmp_path / "runs" / name,
              progress=False).run()
    res = json.loads((tmp_path / "runs" / "a" / "results.json").read_text())
    del res["config"]["train"]["lr"], res["config"]["tasks"]["pretrain_cache"]
    (tmp_path / "runs" / "a" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path / "runs")
    an = tmp_path / "runs" / "analysis"
    assert (an / "report.html").is_file() and (an / "stability_vs_forgetting.png").is_file()
    assert "cfg.train.lr" in (an / "per_run.csv").read_text()


@pytest.mark.parametrize("sets, needle", [
    (["model.image.patch_size=0"], "config key 'model.image.patch_size': must be >= 1"),
    (["model.image.hidden_size=0"], "config key 'model.image.hidden_size': must be >= 1"),
    (["model.text.max_length=1"], "config key 'model.text.max_length': must be >= 3"),
    (["index.nprobe=0"], "config key 'index.nprobe': must be >= 1"),
    (["index.drift_map_fit=0"], "config key 'index.drift_map_fit': must be >= 1"),
    (["index.hnsw_m=0"], "config key 'index.hnsw_m': must be >= 2"),
    (["tasks.order=[]"], "config key 'tasks.order': an empty list names no task"),
    (["model.image.patch_size=5"], "the image size must be a multiple of the patch size"),
    (["model.text.heads=3"], "the hidden size must be a multiple of the number of heads"),
    (["train.epochs=1000000000"], "config key 'train.epochs': 1000000000 epochs would plan more batches"),
])
def test_sizes_that_cannot_work_are_one_line_before_anything_runs(sets, needle, tiny_overrides, tmp_path, capsys):
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *_sets([*tiny_overrides, *sets])]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path, capsys):
    """9 levels of 8 aliases: 8^9 = 134 million leaves if expanded; the message shows a bounded excerpt."""
    levels = ["&a [x, x, x, x, x, x, x, x]"] + [f"&{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    (tmp_path / "c.yaml").write_text(f"seed: [{', '.join(levels)}]\n")
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "config key 'seed': expected int, got list" in err, err[:600]


def test_a_study_under_a_folder_named_analysis_is_analysed(tiny_cfg, tmp_path):
    from ccr.analysis.load import collect
    from ccr.study import Study

    Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "analysis" / "one", progress=False).run()
    assert list(collect(tmp_path / "runs").runs) == ["analysis/one"]


def test_trial_names_never_collide_and_case_names_yaml_reads_as_booleans_are_refused(tmp_path):
    from ccr.distributed.sweep_spec import load_spec, trial_name

    assert trial_name({"tags.x": "a/b"}) != trial_name({"tags.x": "a_b"})
    assert trial_name({"train.lr": 0.1234567}) != trial_name({"train.lr": 0.12345671})
    assert trial_name({"seed": 1, "train.lr": 0.001}) == "seed=1,train.lr=0.001"  # exact: readable, unchanged
    spec = tmp_path / "s.yaml"
    spec.write_text("grid:\n  flag:\n    yes: {train.lr: 0.1}\n    no: {train.lr: 0.2}\n")
    with pytest.raises(ConfigError, match="has a case named True, which YAML reads from yes/no"):
        load_spec(spec)


def test_optuna_on_the_index_cost_is_allowed_and_test_only_metrics_point_to_a_val_one(tmp_path):
    from ccr.distributed.sweep_spec import load_spec

    base = "set: {data.val_per_task: 4}\noptuna:\n  space: {train.lr: {type: loguniform, low: 0.001, high: 0.01}}\n"
    (tmp_path / "cost.yaml").write_text(base + "  metric: index_cost/embedded\n  mode: min\n")
    assert load_spec(tmp_path / "cost.yaml").optuna["metric"] == "index_cost/embedded"
    (tmp_path / "zs.yaml").write_text(base + "  metric: zero_shot/t2i/R@1\n  mode: max\n")
    with pytest.raises(ConfigError, match="Select on the val split: 'val/t2i/R@1'"):
        load_spec(tmp_path / "zs.yaml")


def test_damaged_caches_are_rebuilt_not_trusted(tmp_path):
    """A truncated decoded-image cache, a killed build's temporary file, a validated-dataset record of the
    wrong shape: each is noticed and rebuilt, never a traceback."""
    from ccr.configure import load_config
    from ccr.data import load_dataset
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path / "d")
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'c'}",
                             "data.image_cache=true", "model.image.image_size=16"])
    first = load_dataset(cfg).images.load(np.arange(4)).numpy()
    (npy,) = (tmp_path / "c" / "images").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    (npy.parent / f".{npy.name}.999999.tmp").write_bytes(b"\0" * 1000)  # a killed build's leftover
    (record,) = (tmp_path / "c" / "datasets").glob("*.json")
    record.write_text(json.dumps({"name": "x", "sources": []}))  # valid JSON, wrong shape
    again = load_dataset(cfg).images.load(np.arange(4)).numpy()
    assert np.array_equal(first, again) and not list(npy.parent.glob(".*.tmp"))


def test_one_task_prints_no_forgetting_and_rsum_shows_once(tiny_cfg, tmp_path):
    from ccr.analysis.html_report import analyze
    from ccr.run_tables import summary_table
    from ccr.study import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "one", progress=False).run()
    row = summary_table(res).splitlines()[1].split()
    assert row[3] == "-" and row[5] == "-"  # forgetting of i2t and t2i: undefined with one task
    analyze(tmp_path / "runs")
    md = (tmp_path / "runs" / "analysis" / "summary.md").read_text()
    assert md.count("| rsum |") == 1 and "1 run (" in md and "**" not in md.split("## What")[0]


@pytest.mark.slow
@pytest.mark.parametrize("sets, needle", [
    (["train.workers=4"], "4 training workers (train.workers x train.cpus_per_worker) needs 4 CPU"),
    (["index.shards=64"], "64 gallery shards (index.shards x index.shard_cpus / shard_gpus) needs 64 CPU"),
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
        argv = ["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", "train.workers=2"])]
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


def test_read_only_caches_and_scratch(tiny_overrides, tmp_path, capsys, monkeypatch):
    """A read-only data.cache_dir is a warning (the study runs, the cache is not kept); a read-only
    CCR_SCRATCH, needed for a study in an object store, is one line naming it."""
    if os.geteuid() == 0:  # root writes through any mode bits: make a "read-only" folder a file's child
        ro = tmp_path / "file"
        ro.write_text("")
        cache, scratch = ro / "cache", ro / "scratch"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        cache, scratch = tmp_path / "ro" / "cache", tmp_path / "ro" / "scratch"
    sets = [*[o for o in tiny_overrides if not o.startswith("data.cache_dir")], f"data.cache_dir={cache}",
            "data.n_tasks=2", "train.epochs=1"]
    assert main(["run", "--out", str(tmp_path / "o"), *_sets(sets)]) == 0
    assert "cannot write the cache file" in capsys.readouterr().err
    from ccr.storage import Storage, StorageError

    monkeypatch.setenv("CCR_SCRATCH", str(scratch))
    with pytest.raises(StorageError, match="point CCR_SCRATCH at a writable folder"):
        Storage("s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http").scratch()


@pytest.mark.parametrize("file, change, needle", [
    ("image_data.json", lambda d: d[2].update(image_id="x7"), r"image_data.json: record 3 is malformed \(ValueError"),
    ("objects.json", lambda d: d[0].update(objects=["dog"]),
     r"objects.json: record 1 is malformed \(TypeError: 'objects'"),
    ("region_descriptions.json", lambda d: d[1].update(regions="a phrase"), r"record 2 is malformed \(TypeError"),
])
def test_malformed_visual_genome_records_are_named(file, change, needle, tmp_path):
    from ccr.configure import load_config
    from ccr.data import DataError, load_dataset
    from tests.data_fixtures import make_visual_genome

    paths = make_visual_genome(tmp_path / "vg")
    data = json.loads((paths["path"] / file).read_text())
    change(data)
    (paths["path"] / file).write_text(json.dumps(data))
    cfg = load_config(None, ["data.kind=visual_genome", f"data.path={paths['path']}",
                             f"data.images={paths['images']}", f"data.task_map={paths['task_map']}",
                             f"data.cache_dir={tmp_path / 'c'}"])
    with pytest.raises(DataError, match=needle):
        load_dataset(cfg)


def test_no_crafted_results_file_aborts_an_analysis(tiny_cfg, tmp_path, capsys):
    """Every field of a real results.json (anatomy, zero-shot, transfer, control, flips, backfill curve and the
    config included) replaced by a value of another type, one at a time: each file is either named and skipped
    as not a ccr result, or analysed; the analysis of all of them together completes."""
    import copy
    import math

    from ccr.analysis.load import collect
    from ccr.results import problem
    from ccr.study import Study

    cfg = tiny_cfg("data.n_tasks=3", "train.epochs=1", "eval.transfer=true", "eval.backfill_curve=[0,1]",
                   "eval.backfill_orders=[oldest]", "index.compare=[no_reindex]", "eval.ks=[1,5]")
    good = Study(cfg, tmp_path / "study", progress=False).run()

    def paths(o, pre=(), depth=0):  # every field to depth 2; below, the first 3 keys of each object (the rest
        yield pre                      # repeat their shape: more tasks, K, policies) and the first list item
        if depth < (3 if pre[:1] == ("config",) else 6):
            if isinstance(o, dict):
                for k in list(o) if depth < 2 else list(o)[:3]:
                    yield from paths(o[k], (*pre, k), depth + 1)
            elif isinstance(o, list) and o:
                yield from paths(o[0], (*pre, 0), depth + 1)

    bad = [None, "x", [], {"x": 1}, True, math.nan]
    runs, skipped = tmp_path / "runs", 0
    for i, path in enumerate(p for p in paths(good) if p):
        for j, value in enumerate(bad):
            res = copy.deepcopy(good)
            node = res
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            text = json.dumps(res)
            skipped += bool(problem(json.loads(text)))
            (runs / f"m{i}_{j}").mkdir(parents=True)
            (runs / f"m{i}_{j}" / "results.json").write_text(text)
    c = collect(runs)
    assert len(c.corrupt) == skipped and len(c.runs) + skipped == len(list(runs.glob("*/results.json")))
    assert all(why and len(why) < 200 for _, why in c.corrupt)
    assert main(["analyze", str(runs), "--gallery-size", "1000000", "--device-hour-price", "2"]) == 0
    assert (runs / "analysis" / "report.html").is_file() and (runs / "analysis" / "cost_at_scale.md").is_file()
