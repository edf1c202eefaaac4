"""Precomputed features (VSE++/SCAN layout) and Visual Genome: real file layouts, 3-task studies end to
end, and one clear error for every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccr.config.schema import ConfigError
from ccr.data import DataError, load_dataset
from ccr.data.visual_genome import phrases_for, task_by_objects
from ccr.study.configure import load_config
from tests.conftest import TINY
from tests.data_fixtures import make_precomp, make_visual_genome


def pcfg(pc, tmp_path, *extra):
    return load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=precomp",
                              f"data.path={pc['path']}", f"data.tasks_file={pc['tasks_file']}", *extra])


def vcfg(vg, tmp_path, *extra):
    tiny = [o for o in TINY if not o.startswith("data.captions_per_image")]  # Visual Genome's default: 5
    return load_config(None, [*tiny, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=visual_genome",
                              f"data.path={vg['path']}", f"data.images={vg['images']}",
                              f"data.task_map={vg['task_map']}", "data.test_per_task=3", "data.val_per_task=2",
                              *extra])


# ---- precomputed features ------------------------------------------------------------------------
@pytest.mark.parametrize("regions", [0, 3])
def test_precomp_layout_splits_captions_and_features(tmp_path, regions):
    pc = make_precomp(tmp_path / "pc", regions=regions)
    ds = load_dataset(pcfg(pc, tmp_path))
    assert ds.task_names == ["animals", "plants", "vehicles"]
    assert [len(ds.image_ids("plants", s)) for s in ("train", "val", "test")] == [24, 4, 6]
    assert (ds.caption_counts() == 5).all() and len(ds.captions) == 5 * ds.n_images
    ids = ds.image_ids("vehicles", "test")
    feats = ds.images.load(ids)
    # global ids run over train (72), dev (12), then test, whose rows are animals, vehicles, plants
    want = np.load(pc["path"] / "test_ims.npy")[ids - 84]
    assert list(ids - 84) == list(range(6, 12))
    assert feats.shape == ((6, 3, 24) if regions else (6, 24)) and np.allclose(feats.numpy(), want)
    first = ds.captions_of(ids[:1])
    assert ds.captions[first[0]].startswith("a ") and "test item 0" in ds.captions[first[0]]


@pytest.mark.slow
@pytest.mark.parametrize("regions", [0, 3])
def test_precomp_study_runs_three_tasks_with_an_mlp_on_the_features(tmp_path, regions):
    from ccr.study.runner import Study

    pc = make_precomp(tmp_path / "pc", regions=regions)
    cfg = pcfg(pc, tmp_path, "model.image.layers=1", "train.epochs=3", "strategy.name=replay",
               "index.compare=[no_reindex]")
    study = Study(cfg, tmp_path / "out", progress=False, threads=1)
    res = study.run()
    assert res["task_order"] == ["animals", "plants", "vehicles"] and res["status"] == "complete"
    assert type(study.model.image_encoder).__name__ == "FeatureEncoder"
    diag = [res["recall"]["t2i"]["10"][s][s] for s in range(3)]
    assert min(diag) > 100 * 10 / 30  # each task learned: above chance (10 of 30 test captions' images)


def test_precomp_bad_inputs_are_one_clear_error(tmp_path):
    def fresh():
        import shutil

        shutil.rmtree(tmp_path / "pc", ignore_errors=True)
        return make_precomp(tmp_path / "pc")

    pc = fresh()
    (pc["path"] / "dev_caps.txt").unlink()
    with pytest.raises(DataError, match="dev_caps.txt is missing"):
        load_dataset(pcfg(pc, tmp_path))
    pc = fresh()
    (pc["path"] / "test_ims.npy").unlink()
    (pc["path"] / "test_caps.txt").unlink()
    with pytest.raises(DataError, match="has no test split"):
        load_dataset(pcfg(pc, tmp_path))
    pc = fresh()
    with open(pc["path"] / "train_caps.txt", "a") as f:
        f.write("one caption too many\n")
    with pytest.raises(DataError, match=r"train_caps.txt has 361 captions for 72 images .* must divide"):
        load_dataset(pcfg(pc, tmp_path))
    pc = fresh()
    np.save(pc["path"] / "dev_ims.npy", np.zeros((12, 7), np.float32))
    with pytest.raises(DataError, match=r"dev_ims.npy has features of shape \(7,\), train_ims.npy \(24,\)"):
        load_dataset(pcfg(pc, tmp_path))
    np.save(pc["path"] / "dev_ims.npy", np.zeros((12,), np.float32))
    with pytest.raises(DataError, match="must be a non-empty float array of N x D"):
        load_dataset(pcfg(pc, tmp_path))
    (pc["path"] / "dev_ims.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a readable .npy array"):
        load_dataset(pcfg(pc, tmp_path))
    pc = fresh()
    tasks = json.loads(pc["tasks_file"].read_text())
    pc["tasks_file"].write_text(json.dumps({**tasks, "test": tasks["test"][:-1]}))
    with pytest.raises(DataError, match="'test' must list one task name per image of test_ims.npy \\(18\\)"):
        load_dataset(pcfg(pc, tmp_path))
    pc["tasks_file"].write_text(json.dumps({**tasks, "test": ["fungi"] + tasks["test"][1:]}))
    with pytest.raises(DataError, match=r"task\(s\) \['fungi'\] have dev/test images but no training image"):
        load_dataset(pcfg(pc, tmp_path))
    with pytest.raises(ConfigError, match="'data.tasks_file': required when data.kind is precomp"):
        load_config(None, ["data.kind=precomp", f"data.path={pc['path']}"])
    with pytest.raises(ConfigError, match="model.image.pretrained"):
        pcfg(pc, tmp_path, "model.image.pretrained=/x")


# ---- Visual Genome -------------------------------------------------------------------------------
def test_region_phrases_longest_first_deduplicated_and_long_enough():
    regions = [{"phrase": p} for p in ["a dog", "A  DOG", "it", "the big dog on the mat", "dog park", ""]]
    assert phrases_for(regions, 5, 2) == ["the big dog on the mat", "dog park", "a dog"]
    assert phrases_for(regions, 1, 1) == ["the big dog on the mat"]


def test_task_of_the_most_frequent_mapped_object_ties_to_the_first_in_the_map():
    tmap = {"dog": "animals", "car": "vehicles", "tree": "plants"}
    objs = lambda *names: [{"names": [n]} for n in names]  # noqa: E731
    assert task_by_objects(objs("car", "dog", "dog", "rock", "rock", "rock"), tmap) == "animals"
    assert task_by_objects(objs("tree", "car"), tmap) == "vehicles"  # a tie: car comes first in the map
    assert task_by_objects(objs("Car "), tmap) == "vehicles"  # names compare lower-cased, spaces collapsed
    assert task_by_objects(objs("rock"), tmap) is None


def test_visual_genome_layout_tasks_phrases_and_seeded_split(tmp_path, caplog):
    vg = make_visual_genome(tmp_path / "vg")
    with caplog.at_level("WARNING"):
        ds = load_dataset(vcfg(vg, tmp_path))
    assert ds.task_names == ["animals", "plants", "vehicles"]
    assert "2 images without a task are left out" in caplog.text
    assert [len(ds.image_ids("animals", s)) for s in ("train", "val", "test")] == [7, 2, 3]
    caps = [ds.captions[c] for c in ds.captions_of(ds.image_ids("animals", "train")[:1])]
    assert len(caps) == 5 and caps == sorted(caps, key=len, reverse=True) and "it" not in caps
    assert len({c.lower() for c in caps}) == 5
    assert ds.images.load(ds.image_ids("plants", "test")).shape == (3, 3, 16, 16)  # found in all 3 folders
    assert ds.info["split"] == {"kind": "seeded", "seed": 0, "test_per_task": 3, "val_per_task": 2}
    again = load_dataset(vcfg(vg, tmp_path))  # the same split every time (data.generator_seed)
    assert (again.image_split == ds.image_split).all()
    other = load_dataset(vcfg(vg, tmp_path, "data.generator_seed=1"))
    assert not (other.image_split == ds.image_split).all()


@pytest.mark.slow
def test_visual_genome_study_runs_three_tasks_and_records_its_split(tmp_path):
    from ccr.study.runner import Study

    vg = make_visual_genome(tmp_path / "vg")
    res = Study(vcfg(vg, tmp_path, "data.captions_per_image=3"), tmp_path / "out", progress=False, threads=1).run()
    assert res["status"] == "complete" and len(res["task_order"]) == 3
    assert res["dataset"]["split"]["kind"] == "seeded" and res["dataset"]["left_out"]["without a task"] == 2
    assert res["config"]["data"]["captions_per_image"] == 3


def test_visual_genome_split_and_tasks_files(tmp_path):
    vg = make_visual_genome(tmp_path / "vg")
    data = json.loads((vg["path"] / "image_data.json").read_text())
    ids = [d["image_id"] for d in data][:24]
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({str(i): "even" if n % 2 == 0 else "odd" for n, i in enumerate(ids)}))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({str(i): ("test", "val", "train", "train")[n % 4] for n, i in enumerate(ids)}))
    ds = load_dataset(vcfg(vg, tmp_path, f"data.tasks_file={tasks}", "data.task_map=null", f"data.split_file={split}"))
    assert ds.task_names == ["even", "odd"] and ds.n_images == 24
    assert ds.info["split"]["kind"] == "file" and len(ds.image_ids(["even", "odd"], "test")) == 6


def test_visual_genome_bad_inputs_are_one_clear_error(tmp_path):
    vg = make_visual_genome(tmp_path / "vg")
    with pytest.raises(ConfigError, match="needs 'data.tasks_file'"):
        load_config(None, ["data.kind=visual_genome", f"data.path={vg['path']}", f"data.images={vg['images']}"])
    (vg["path"] / "objects.json").rename(vg["path"] / "o.json")
    with pytest.raises(DataError, match="lacks objects.json"):
        load_dataset(vcfg(vg, tmp_path))
    (vg["path"] / "o.json").write_text(json.dumps([{"image_id": 1}]))
    (vg["path"] / "o.json").rename(vg["path"] / "objects.json")
    with pytest.raises(DataError, match="objects.json must be a JSON list of objects with 'image_id', 'objects'"):
        load_dataset(vcfg(vg, tmp_path))
    vg = make_visual_genome(tmp_path / "vg2")
    first = json.loads((vg["path"] / "image_data.json").read_text())[0]["image_id"]
    (vg["images"] / f"{first}.jpg").unlink()
    with pytest.raises(DataError, match=f"missing image files .*{first}.jpg"):
        load_dataset(vcfg(vg, tmp_path))
    vg = make_visual_genome(tmp_path / "vg3")
    with pytest.raises(DataError, match="tasks too small for data.test_per_task=10"):
        load_dataset(vcfg(vg, tmp_path, "data.test_per_task=10"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({str(first): "holdout"}))
    with pytest.raises(DataError, match="splits must be train, val or test: .*holdout"):
        load_dataset(vcfg(vg, tmp_path, f"data.split_file={split}"))
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"999999": "a"}))
    with pytest.raises(DataError, match="names image ids that are not in image_data.json: 999999"):
        load_dataset(vcfg(vg, tmp_path, f"data.tasks_file={tasks}"))


def test_precomputed_features_that_are_not_finite_and_captions_with_unicode_separators(tmp_path):
    from ccr.data import DataError, load_dataset
    from ccr.study.configure import load_config
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


@pytest.mark.parametrize("file, change, needle", [
    ("image_data.json", lambda d: d[2].update(image_id="x7"), r"image_data.json: record 3 is malformed \(ValueError"),
    ("objects.json", lambda d: d[0].update(objects=["dog"]),
     r"objects.json: record 1 is malformed \(TypeError: 'objects'"),
    ("region_descriptions.json", lambda d: d[1].update(regions="a phrase"), r"record 2 is malformed \(TypeError"),
])
def test_malformed_visual_genome_records_are_named(file, change, needle, tmp_path):
    from ccr.data import DataError, load_dataset
    from ccr.study.configure import load_config
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
