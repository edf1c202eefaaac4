import json

import pytest

from ccr.config import load_config
from ccr.data import DataError, check_tasks, load_dataset, resolve_task_order
from ccr.study import Study
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
