"""eval.distractors: WebDataset shards of gallery entries of no task. Recall in the larger gallery equals a brute-force
computation with the run's model on the same files; every policy embeds them by its rules (reindex at every step,
no_reindex once, backfill as old items) and counts them; the backfill curve's endpoints are the policies'; shards
in a bucket give what the folder gives; bad shards are one line before training."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ccr.data import DataError
from ccr.data.webdataset import scan_shards
from ccr.io.checkpoint import from_bytes
from ccr.io.images import Pixels
from ccr.study.runner import Study, checkpoint_path
from tests.webdataset_fixture import make_shards

N = 150  # distractors: 12 test images per task (TINY) against 150 more
COMMON = ["train.threads=1", "eval.anatomy=false"]


def _files(folder) -> tuple[list[np.ndarray], list[str]]:
    """Every sample's pixels and caption read straight from the tar files (tarfile and PIL, not ccr's reader)."""
    pixels, captions = [], []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for key in sorted({n.split(".")[0] for n in members}):
                img = next(n for n in members if n.startswith(key + ".") and n.endswith((".png", ".jpg")))
                with Image.open(io.BytesIO(tar.extractfile(members[img]).read())) as im:
                    pixels.append(Pixels.square(16).apply(im))
                captions.append(tar.extractfile(members[key + ".txt"]).read().decode().strip())
    return pixels, captions


def _brute_force(study: Study, pixels: list[np.ndarray], captions: list[str], k: int) -> dict[str, float]:
    """Mean R@k over the tasks, each task's test items + every distractor in its gallery, all embedded by the
    final model here: the reference the reindex policy's last row must equal (task scope)."""
    ds, model = study.ds, study.model.eval()
    with torch.inference_mode():
        def text(texts: list[str]) -> np.ndarray:
            tok = study.tokenize(texts)
            return model.encode_text(tok.input_ids, tok.attention_mask).numpy()

        d_img = model.encode_images(torch.from_numpy(np.stack(pixels))).numpy()
        d_cap = text(captions)
        out = {"i2t": [], "t2i": []}
        for t in study.order:
            img_ids, cap_ids = ds.image_ids(t, "test"), ds.caption_ids(t, "test")
            q_img = model.encode_images(ds.images.load(img_ids)).numpy()
            q_cap = text([ds.captions[c] for c in cap_ids])
            # image -> text: hit when one of the k best captions is the image's own (distractor captions never are)
            gal = np.concatenate([q_cap, d_cap])
            owner = np.concatenate([ds.caption_image[cap_ids], np.full(len(captions), -1)])
            top = np.argsort(-(q_img @ gal.T), axis=1, kind="stable")[:, :k]
            out["i2t"].append(100 * np.mean([(owner[row] == i).any() for row, i in zip(top, img_ids, strict=True)]))
            gal = np.concatenate([q_img, d_img])
            ids = np.concatenate([img_ids, np.full(len(pixels), -1)])
            top = np.argsort(-(q_cap @ gal.T), axis=1, kind="stable")[:, :k]
            mine = ds.caption_image[cap_ids]
            out["t2i"].append(100 * np.mean([(ids[row] == i).any() for row, i in zip(top, mine, strict=True)]))
    return {d: float(np.mean(v)) for d, v in out.items()}


def test_policies_embed_and_count_distractors_by_their_rules_and_recall_is_the_larger_gallerys(tiny_cfg, tmp_path):
    shards = make_shards(tmp_path / "shards", N + 20, per_shard=64)  # 3 shards; the limit takes the first N
    cfg = tiny_cfg(*COMMON, f"eval.distractors={shards}", f"eval.distractors_limit={N}",
                   "index.compare=[no_reindex,backfill]", "eval.backfill_curve=[0,1]", "eval.backfill_orders=[oldest]")
    res = Study(cfg, tmp_path / "run", progress=False).run()
    assert res["dataset"]["distractors"] == {"samples": N, "shards": 3}
    n_task = {"images": 12, "captions": 24}  # TINY: 12 test images per task, 2 captions each
    for m in n_task:  # per step: the new task, and the distractors with task 1 ...
        new = [n_task[m] + N, n_task[m], n_task[m]]
        old = [0, N + n_task[m], N + 2 * n_task[m]]  # ... and what each step finds already in the gallery
        cost = {p: [s[m] for s in res["by_policy"][p]["index_cost"]["per_step"]] for p in res["by_policy"]}
        assert cost["reindex"] == [a + b for a, b in zip(new, old, strict=True)]  # every old entry, every step
        assert cost["no_reindex"] == new  # distractors embedded once
        assert cost["backfill"] == [a + -(-b // 4) for a, b in zip(new, old, strict=True)]  # a quarter of old
        assert res["by_policy"]["reindex"]["index_cost"][f"{m}_embedded"] == sum(cost["reindex"])

    # at another gallery size the costs scale by the gallery the study had: its test images and its distractors
    from ccr.analysis.economics import Scale, cost_rows

    costs = cost_rows({"run": res}, Scale(gallery_size=1000 * (36 + N)), 1).set_index("policy")
    assert costs.loc["reindex", "images_per_update"] == pytest.approx(1000 * (12 + N + 12 + 12 + N + 24) / 2)
    assert costs.loc["no_reindex", "images_per_update"] == pytest.approx(1000 * 12)

    # the reindex policy's last row: the final model on the files, brute force
    study = Study(cfg, tmp_path / "run", progress=False)
    study.build()
    order = res["task_order"]
    study.restore(from_bytes(checkpoint_path(tmp_path / "run", len(order) - 1, order).read_bytes(), "ck",
                             map_location="cpu"))
    pixels, captions = _files(shards)
    ref = _brute_force(study, pixels[:N], captions[:N], 5)
    for d in ("i2t", "t2i"):
        last = np.mean(res["by_policy"]["reindex"]["recall"][d]["5"][-1])
        assert last == pytest.approx(ref[d], abs=1e-9), d
        for fraction, policy in ((0.0, "no_reindex"), (1.0, "reindex")):  # the curve's ends are the policies
            point = [r["recall"] for r in res["backfill_curve"] if r["step"] == len(order) - 1 and r["k"] == 5
                     and r["fraction"] == fraction and r["direction"] == d]
            assert point == [pytest.approx(np.mean(res["by_policy"][policy]["recall"][d]["5"][-1]))]
    # the distractors made the gallery harder: no task's recall is above its recall without them
    plain = Study(tiny_cfg(*COMMON), tmp_path / "plain", progress=False).run()
    assert sum(np.mean(res["recall"][d]["10"][-1]) for d in ("i2t", "t2i")) <= \
        sum(np.mean(plain["recall"][d]["10"][-1]) for d in ("i2t", "t2i"))


def test_shards_in_a_bucket_read_by_ranges_give_what_the_folder_gives(s3, tmp_path):
    """The scan streams each shard once and images are read by ranged reads: the same index, the same pixels."""
    from ccr.data.webdataset import WebDatasetImages
    from ccr.io.storage import Storage

    folder = make_shards(tmp_path / "shards", 30, per_shard=16)
    store = Storage(s3.uri("ccr", "distractors"))
    store.upload_dir(folder, "laion")
    local = scan_shards(str(folder), cache_dir=str(tmp_path / "cache"))
    remote = scan_shards(store.child("laion").uri, cache_dir=str(tmp_path / "cache"))
    assert remote.keys == local.keys and remote.captions == local.captions and len(local) == 30
    assert local.shards == ["00000.tar", "00001.tar"] and local.keys[16] == "000000016"
    ids = np.array([0, 17, 29, 3])
    a = WebDatasetImages.of(local, Pixels.square(16)).load(ids)
    b = WebDatasetImages.of(remote, Pixels.square(16)).load(ids)
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    pixels, captions = _files(folder)
    assert np.array_equal(a[1].numpy(), pixels[17]) and local.captions[17] == captions[17]


def _corrupt(folder, case: str) -> str:
    if case == "not_tar":
        (folder / "00001.tar").write_bytes(b"this is no tar file" * 40)
    elif case == "undecodable":
        with tarfile.open(folder / "00009.tar", "w") as tar:
            for name, data in (("bad.png", b"\x89PNG not really"), ("bad.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(folder)


@pytest.mark.parametrize("case, needle", [
    ("no_caption", "sample '000000005' of shard"),
    ("no_image", "sample '000000004' of shard"),
    ("not_tar", "00001.tar is not a readable tar file"),
    ("empty", "no .tar shards under"),
    ("limit", "eval.distractors_limit=500, but the 2 shard(s)"),
])
def test_bad_shards_are_one_line_before_training(tiny_cfg, tmp_path, case, needle):
    drop = {5: "txt"} if case == "no_caption" else {4: "png"} if case == "no_image" else None
    folder = make_shards(tmp_path / "shards", 24, per_shard=16, drop=drop)
    if case == "empty":
        for f in folder.glob("*.tar"):
            f.unlink()
    extra = ["eval.distractors_limit=500"] if case == "limit" else []
    with pytest.raises(DataError) as e:
        Study(tiny_cfg(*COMMON, f"eval.distractors={_corrupt(folder, case)}", *extra), tmp_path / "out",
              progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_node_scans_the_shards_once_and_again_when_they_change(tmp_path, monkeypatch, caplog):
    """The scan is kept per node: a second study (a Ray Train rank, a resume, `ccr calibrate`) reads it back, the
    same index, without reading a shard; a shard rewritten (other size or modification time), or a damaged kept
    scan, is scanned again."""
    from ccr.data import webdataset

    folder = make_shards(tmp_path / "shards", 40, per_shard=16)
    cache = str(tmp_path / "cache")
    read = []
    samples = webdataset._samples
    monkeypatch.setattr(webdataset, "_samples", lambda store, name: (read.append(name), samples(store, name))[1])
    first = scan_shards(str(folder), 30, cache)
    assert read == ["00000.tar", "00001.tar"] and len(first) == 30
    again = scan_shards(str(folder), 30, cache)
    assert read == ["00000.tar", "00001.tar"]  # nothing read: the kept scan
    for f in ("uri", "shards", "keys", "captions"):
        assert getattr(again, f) == getattr(first, f), f
    for f in ("shard", "offset", "size"):
        a, b = getattr(again, f), getattr(first, f)
        assert np.array_equal(a, b) and a.dtype == b.dtype, f
    assert len(scan_shards(str(folder), 0, cache)) == 40 and len(read) == 5  # another limit: another scan
    make_shards(tmp_path / "other", 40, per_shard=16, seed=1)
    (tmp_path / "other" / "00001.tar").replace(folder / "00001.tar")  # a shard changed
    changed = scan_shards(str(folder), 30, cache)
    assert read[5:] == ["00000.tar", "00001.tar"] and changed.captions[20] != first.captions[20]
    for kept in (tmp_path / "cache" / "distractors").glob("*.parquet"):
        kept.write_bytes(b"damaged")
    assert scan_shards(str(folder), 30, cache).captions == changed.captions and len(read) == 9
    assert "ignoring the distractor scan" in caplog.text


def test_an_undecodable_image_names_its_shard_and_key(tmp_path):
    folder = make_shards(tmp_path / "shards", 4, per_shard=4)
    from ccr.data.webdataset import WebDatasetImages

    index = scan_shards(_corrupt(folder, "undecodable"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"sample 'bad' in shard .*00009.tar cannot be decoded"):
        WebDatasetImages.of(index, Pixels.square(16)).load(np.array([4]))


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ccr.data import webdataset
from ccr.study.configure import load_config
from ccr.study.runner import Study
calls = []
load = webdataset.WebDatasetImages.load

def dying_load(self, ids):  # the third batch of distractor images: task 2's re-indexing, half done
    calls.append(len(ids))
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return load(self, ids)

webdataset.WebDatasetImages.load = dying_load
Study(load_config(None, {sets!r}), {out!r}, progress=False).run()
"""


def test_a_study_killed_while_embedding_distractors_resumes_to_the_same_numbers(tiny_overrides, tmp_path):
    """A real process killed (SIGKILL) in the middle of re-embedding its distractors: run again, it resumes from
    its last checkpoint and ends with the numbers of a run never interrupted."""
    import subprocess
    import sys
    from pathlib import Path

    from ccr.study.configure import load_config
    from tests.conftest import counts

    shards = make_shards(tmp_path / "shards", 60, per_shard=32)
    sets = [*tiny_overrides, *COMMON, f"eval.distractors={shards}", "eval.batch_size=32",
            "index.compare=[no_reindex]"]
    killed = subprocess.run([sys.executable, "-c", KILLER.format(root=str(Path(__file__).parents[1]), sets=sets,
                                                                  out=str(tmp_path / "b"))], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    partial = json.loads((tmp_path / "b" / "results.json").read_text())
    assert partial["status"] != "complete" and partial["tasks_done"] == 1, (partial["status"], partial["tasks_done"])
    resumed = Study(load_config(None, sets), tmp_path / "b", progress=False).run()
    whole = Study(load_config(None, sets), tmp_path / "a", progress=False).run()
    assert resumed["resumes"] == [0]
    for p in ("reindex", "no_reindex"):
        assert resumed["by_policy"][p]["recall"] == whole["by_policy"][p]["recall"], p
        assert counts(resumed["by_policy"][p]["index_cost"]) == counts(whole["by_policy"][p]["index_cost"]), p


@pytest.mark.parametrize("sets, needle", [
    (["index.embed_actors=2"], "config key 'index.embed_actors': the pool embeds distractors"),
    (["eval.distractors_limit=10"], "config key 'eval.distractors_limit' is set, but eval.distractors names no"),
])
def test_keys_that_need_distractors_are_refused_without_them(tiny_cfg, sets, needle):
    from ccr.config.schema import ConfigError

    with pytest.raises(ConfigError) as e:
        tiny_cfg(*sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_study_without_distractors_gives_the_numbers_it_gave_before_them(tiny_cfg, tmp_path):
    """The recall matrices (test and val), costs, negative flips and backfill curve of a study with every policy
    family, val items and the `seen` scope, as ccr computed them before eval.distractors existed (commit 0a85790,
    tests/golden/no_distractors.json): distractors change nothing where there are none."""
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "golden" / "no_distractors.json").read_text())
    r = Study(tiny_cfg(*golden["sets"]), tmp_path / "run", progress=False).run()
    for p, want in golden["results"].items():
        if p == "backfill_curve":
            got = [{k: x[k] for k in want[0]} for x in r["backfill_curve"]]
        else:
            v = r["by_policy"][p]
            got = {"recall": v["recall"], "val_recall": v.get("val_recall"), "negative_flips": v.get("negative_flips"),
                   "index_cost": {k: v["index_cost"][k] for k in ("images_embedded", "captions_embedded")}}
        assert json.loads(json.dumps(got, sort_keys=True)) == want, p
