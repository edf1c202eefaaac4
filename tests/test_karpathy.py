import json

import numpy as np
import pytest
import torch

from ccr.data import DataError, check_tasks, load_dataset, resolve_task_order
from ccr.study.configure import load_config
from ccr.study.runner import Study
from tests.karpathy_fixture import make_karpathy


@pytest.fixture
def kp(tmp_path):
    return make_karpathy(tmp_path)


def kcfg(paths, *extra):
    base = ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
            "model.image.image_size=16", "model.image.patch_size=4"]
    if not any(e.startswith("data.instances") for e in extra):
        base.append(f"data.tasks_file={paths['tasks_file']}")
    return load_config(None, [*base, *extra])


def test_loads_splits_captions_and_converts_images(kp):
    ds = load_dataset(kcfg(kp))
    assert ds.task_names == ["animal", "vehicle"]
    assert len(ds.image_ids("animal", "test")) == 4
    assert len(ds.image_ids("animal", "train")) == 8  # restval counts as train
    assert len(ds.captions) == 2 * ds.n_images
    imgs = ds.images.load(ds.image_ids("vehicle", "test"))
    assert imgs.shape == (4, 3, 16, 16) and str(imgs.dtype) == "torch.uint8"


def test_tasks_by_coco_supercategory(kp):
    cfg = kcfg(kp, f"data.instances={kp['instances']}")
    ds = load_dataset(cfg)
    by_file = json.loads(kp["tasks_file"].read_text())
    for name, task in zip(ds.image_names, ds.image_task, strict=True):
        assert by_file[name] == task


def test_tasks_by_coco_category_map_read_with_pycocotools(kp, tmp_path):
    """data.task_map: the task of each image's largest object whose category is mapped; an image whose
    mapped objects are all small still gets the task of the largest of them; unknown names are refused."""
    tmap = tmp_path / "map.json"
    tmap.write_text(json.dumps({"dog": "pets", "car": "roads"}))
    ds = load_dataset(kcfg(kp, f"data.instances={kp['instances']}", f"data.task_map={tmap}"))
    by_file = json.loads(kp["tasks_file"].read_text())
    assert ds.task_names == ["pets", "roads"]
    for name, task in zip(ds.image_names, ds.image_task, strict=True):
        assert task == {"animal": "pets", "vehicle": "roads"}[by_file[name]]
    tmap.write_text(json.dumps({"car": "roads"}))  # dogs unmapped: every image's largest mapped object is a car
    assert set(load_dataset(kcfg(kp, f"data.instances={kp['instances']}", f"data.task_map={tmap}")).image_task) \
        == {"roads"}
    tmap.write_text(json.dumps({"dog": "pets", "unicorn": "myth"}))
    with pytest.raises(DataError, match="data.task_map names categories that .* does not have: unicorn"):
        load_dataset(kcfg(kp, f"data.instances={kp['instances']}", f"data.task_map={tmap}"))
    kp["instances"].write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}], "categories": []}))
    with pytest.raises(DataError, match="lacks the expected fields"):
        load_dataset(kcfg(kp, f"data.instances={kp['instances']}"))


@pytest.mark.slow
def test_coco_tasks_three_task_study_end_to_end(tmp_path):
    """Karpathy captions with tasks from COCO instances (pycocotools): a 3-task study runs end to end."""
    from tests.conftest import TINY

    kp3 = make_karpathy(tmp_path / "kp3", per_task=10, shapes={"animal": ["dog", "cat"], "vehicle": ["car", "bus"],
                                                                "food": ["cake", "pizza"]})
    cfg = load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=karpathy",
                             f"data.path={kp3['path']}", f"data.images={kp3['images']}",
                             f"data.instances={kp3['instances']}", "data.n_tasks=3", "index.compare=[no_reindex]"])
    res = Study(cfg, tmp_path / "out", progress=False, threads=1).run()
    assert res["status"] == "complete" and res["task_order"] == ["animal", "food", "vehicle"]
    assert set(res["dataset"]["tasks"]) == {"animal", "food", "vehicle"}


def test_missing_image_is_a_clear_error(kp):
    (kp["images"] / "sub" / "img_003.png").unlink()
    with pytest.raises(DataError, match="missing image files.*img_003.png"):
        load_dataset(kcfg(kp))


def test_unreadable_image_is_a_clear_error(kp):
    (kp["images"] / "sub" / "img_005.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="unreadable image files.*img_005.png"):
        load_dataset(kcfg(kp))


def test_image_without_caption_is_a_clear_error(kp):
    data = json.loads(kp["path"].read_text())
    data["images"][2]["sentences"] = []
    kp["path"].write_text(json.dumps(data))
    with pytest.raises(DataError, match="images with no caption: img_002"):
        load_dataset(kcfg(kp))


def test_task_without_test_items_is_a_clear_error(kp):
    data = json.loads(kp["path"].read_text())
    tasks = json.loads(kp["tasks_file"].read_text())
    for e in data["images"]:
        if tasks[e["filename"]] == "vehicle" and e["split"] == "test":
            e["split"] = "train"
    kp["path"].write_text(json.dumps(data))
    cfg = kcfg(kp)
    ds = load_dataset(cfg)
    with pytest.raises(DataError, match=r"fewer than 2 test images \(eval.min_test_items\): vehicle \(0\)"):
        check_tasks(ds, resolve_task_order(cfg, ds))


def test_unknown_task_in_order_is_a_clear_error(kp):
    cfg = kcfg(kp, "tasks.order=[animal,plants]")
    ds = load_dataset(cfg)
    with pytest.raises(DataError, match=r"unknown task\(s\) \['plants'\].*animal"):
        resolve_task_order(cfg, ds)


def test_missing_dataset_and_image_root(kp, tmp_path):
    with pytest.raises(DataError, match="dataset file .* not found"):
        load_dataset(kcfg({**kp, "path": tmp_path / "none.json"}))
    with pytest.raises(DataError, match="image folder .* not found"):
        load_dataset(kcfg({**kp, "images": tmp_path / "noimgs"}))


def test_errors_come_before_training(kp, tmp_path):
    """A Study checks its inputs when built: nothing is trained or written for a bad order."""
    cfg = kcfg(kp, "tasks.order=[vehicle,ghosts]")
    with pytest.raises(DataError, match="ghosts"):
        Study(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("strategy", ["finetune", "joint", "ewc", "lwf", "replay", "freeze", "compat", "[replay,lwf]"])
def test_every_strategy_and_policy_on_karpathy_data(kp, tmp_path, strategy):
    """Every strategy trains on the Karpathy fixture, with every indexing policy evaluated on the run."""
    from tests.conftest import TINY

    cfg = load_config(None, [*TINY, "data.kind=karpathy", f"data.path={kp['path']}", f"data.images={kp['images']}",
                             f"data.tasks_file={kp['tasks_file']}", "train.batch_size=4",
                             f"strategy.name={strategy}", "strategy.params.replay.budget=4",
                             "index.compare=[no_reindex,reindex_images,reindex_captions,backfill,drift_map]"])
    res = Study(cfg, tmp_path / "out", progress=False).run()
    assert res["status"] == "complete" and len(res["by_policy"]) == 6
    for pol in res["by_policy"].values():
        assert pol["recall"]["t2i"]["1"][1][0] is not None


def test_a_dataset_is_validated_once_per_content(kp, tmp_path, monkeypatch, caplog):
    """The driver, each Train worker, each shard actor and each trial load the dataset: the first parses
    and checks it, the others read the verdict, until an input file's content changes."""
    import ccr.data.load

    calls = []
    real = ccr.data.load.load_karpathy
    monkeypatch.setattr(ccr.data.load, "load_karpathy", lambda *a: (calls.append(1), real(*a))[1])
    cfg = kcfg(kp, f"data.cache_dir={tmp_path / 'cache'}")
    first = load_dataset(cfg)
    again = load_dataset(kcfg(kp, f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=2"))  # not shaping
    assert len(calls) == 1
    assert again.image_names == first.image_names and again.captions == first.captions
    assert (again.image_split == first.image_split).all() and (again.image_task == first.image_task).all()
    ids = np.arange(first.n_images)
    assert torch.equal(again.images.load(ids), first.images.load(ids))
    tasks = json.loads(kp["tasks_file"].read_text())
    name = next(iter(tasks))
    tasks[name] = "vehicle" if tasks[name] == "animal" else "animal"  # same size, other content
    kp["tasks_file"].write_text(json.dumps(tasks))
    changed = load_dataset(cfg)
    assert len(calls) == 2 and changed.image_task[changed.image_names.index(name)] == tasks[name]
    load_dataset(kcfg(kp, f"data.cache_dir={tmp_path / 'cache'}", "model.image.image_size=8"))  # other size
    assert len(calls) == 3
    (kp["images"] / "sub" / name).unlink()  # images are checked on every load, cached verdict or not
    with pytest.raises(DataError, match=f"missing image files.*{name}"):  # found by the cache, then the loader
        load_dataset(cfg)
    assert len(calls) == 4
    for f in (tmp_path / "cache" / "datasets").iterdir():
        f.write_text("{broken")
    with caplog.at_level("WARNING"), pytest.raises(DataError, match="missing image files"):
        load_dataset(cfg)
    assert "ignoring the dataset cache" in caplog.text and len(calls) == 5


@pytest.mark.parametrize("filepath", ["../../outside", "/etc", "sub/../../.."])
def test_image_paths_outside_the_image_root_are_refused(filepath, tmp_path):
    from ccr.data import DataError, load_dataset
    from ccr.study.configure import load_config
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    data = json.loads(paths["path"].read_text())
    data["images"][3]["filepath"] = filepath
    data["images"][3]["filename"] = "passwd"
    paths["path"].write_text(json.dumps(data))
    tasks = json.loads(paths["tasks_file"].read_text())
    paths["tasks_file"].write_text(json.dumps({**tasks, "passwd": "animal"}))
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}"])
    with pytest.raises(DataError, match="leave data.images") as e:
        load_dataset(cfg)
    assert "passwd" in str(e.value) and "exist" not in str(e.value)


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["images"].append(dict(d["images"][5])), "images listed twice"),
    (lambda d: d["images"].__setitem__(2, "img_002.png"), "an image entry is not an object: img_002.png"),
    (lambda d: d["images"][2]["sentences"].append({"raw": 42}), "a caption ('raw') is not a string: 42"),
])
def test_malformed_karpathy_entries_are_named(mutate, needle, tmp_path):
    from ccr.data import DataError, load_dataset
    from ccr.study.configure import load_config
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    data = json.loads(paths["path"].read_text())
    mutate(data)
    paths["path"].write_text(json.dumps(data))
    cfg = load_config(None, ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
                             f"data.tasks_file={paths['tasks_file']}"])
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(cfg)


def test_a_truncated_jpeg_is_named_before_training_and_good_verdicts_are_cached(tmp_path):
    from ccr.data import DataError, load_dataset
    from ccr.study.configure import load_config
    from tests.karpathy_fixture import make_karpathy

    paths = make_karpathy(tmp_path)
    over = ["data.kind=karpathy", f"data.path={paths['path']}", f"data.images={paths['images']}",
            f"data.tasks_file={paths['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", "data.in_memory=false"]
    load_dataset(load_config(None, over))  # every image decodes: verdicts cached
    (cache,) = (tmp_path / "cache" / "image_checks").glob("*.json")
    assert len(json.loads(cache.read_text())) == 24
    jpeg = paths["images"] / "sub" / "img_000.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # Image.verify() accepts this; decoding does not
    for how in ("data.in_memory=false", "data.in_memory=true", "data.image_cache=true"):  # every pixel store
        with pytest.raises(DataError, match="unreadable image files.*img_000.jpg"):
            load_dataset(load_config(None, [*over, how]))
