"""data.kind=sequence and data.kind=imagefolder: datasets of several kinds chained into one task each, and a
classification dataset as a task (the MTIL protocol) whose recall-matrix cells are its top-K accuracy among its
own classes; checked against eval.classification's separate path on the same folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ccr.config.schema import ConfigError
from ccr.data import DataError
from ccr.study.configure import load_config
from ccr.study.runner import Study
from tests.conftest import TINY
from tests.test_classification import make_imagefolder

CLASSES = {"dog": 10, "cat": 9, "red_car": 8}

TEMPLATES = ["a photo of a {}.", "a {} in the top left"]


def make_split_folder(root: Path) -> Path:
    """train/ and test/ ImageFolders of the same classes (different images)."""
    make_imagefolder(root / "train", CLASSES, seed=1)
    make_imagefolder(root / "test", {c: 4 for c in CLASSES}, seed=2)
    return root


def _over(tmp_path: Path, pets: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=sequence", "train.epochs=1", "train.threads=1",
            "eval.anatomy=false", "checkpoint.keep=2",
            "data.datasets=[{name: shapes, kind: generated, n_tasks: 1, train_per_task: 48, test_per_task: 12, "
            f"captions_per_image: 2}}, {{name: pets, kind: imagefolder, path: {pets}, "
            f"templates: {json.dumps(TEMPLATES)}}}]",
            *extra]


def test_a_classification_task_in_a_sequence_is_measured_by_its_top1_like_eval_classification(tmp_path, caplog):
    """The sequence [pets (imagefolder), shapes (generated)]: pets' items are its images with the templates
    filled with their class names as captions; every cell of pets' column (θ0's zero-shot row, the row after each
    task, both directions, R@1) equals eval.classification's top-1 on pets' test folder with the same prompts,
    which embeds that folder on its own; and R@K is top-K accuracy (R@10 >= 3 classes: 100)."""
    pets = make_split_folder(tmp_path / "pets")
    sets = f'[{{name: pets_test, path: {pets / "test"}, templates: {json.dumps(TEMPLATES)}}}]'
    cfg = load_config(None, _over(tmp_path, pets, "tasks.order=[pets, shapes]", f"eval.classification={sets}"))
    study = Study(cfg, tmp_path / "run", progress=False)
    ds = study.ds
    assert ds.task_names == ["shapes", "pets"] and study.order == ["pets", "shapes"]
    pet_ids = ds.image_ids("pets", "train")
    assert len(pet_ids) == sum(CLASSES.values()) and len(ds.image_ids("pets", "test")) == 12
    assert not set(pet_ids) & set(ds.image_ids("shapes", "train"))  # ids disjoint across entries
    first = ds.captions_of(pet_ids[:1])  # its captions: each template, filled with its class's name
    label = ds.class_labels[pet_ids[0]]
    assert [ds.captions[c] for c in first] == [t.replace("{}", ["cat", "dog", "red car"][label]) for t in TEMPLATES]
    from ccr.study.runner import warn_small_galleries

    with caplog.at_level("WARNING", logger="ccr.study.runner"):
        warn_small_galleries(cfg, ds, study.order)
    assert "R@5, R@10 of task pets: K is at least its 3 classes" in caplog.text  # top-K of 3 classes: always 100
    # 16 pairs over 3 classes of 10, 9, 8 images: 120 pairs x sum(p^2) = 40 same-class pairs a batch
    assert "a batch of 16 holds about 40 pairs of one class" in caplog.text
    res = study.run()
    top1 = res["classification"]["pets_test"]["top1"]
    for d in ("i2t", "t2i"):
        assert res["zero_shot"]["recall"][d]["1"][0] == pytest.approx(top1[0])  # θ0, column pets
        for row in range(2):
            assert res["recall"][d]["1"][row][0] == pytest.approx(top1[row + 1]), (d, row)
        assert res["recall"][d]["10"][1][0] == 100.0  # 3 classes: always among the top 10
    assert res["dataset"]["datasets"]["pets"] == {"kind": "imagefolder", "images": 39, "tasks_merged": ["pets"],
                                                  "classes": 3}
    from ccr.measure.tables import chance_row

    assert chance_row(res, "t2i", 1)[0] == pytest.approx(100 / 3)  # a random class among 3, not among 12 images
    assert chance_row(res, "i2t", 5)[0] == 100.0 and chance_row(res, "t2i", 1)[1] < 10


def test_class_ranks_order_as_argmax_does():
    """A tie goes to the lower class index, as argmax decides: rank 0 exactly where argmax is the own class."""
    from types import SimpleNamespace

    from ccr.data.dataset import ClassTask
    from ccr.measure.classification import class_ranks, class_recall

    heads = np.eye(3, dtype=np.float32)
    imgs = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]], np.float32)
    emb = SimpleNamespace(embed=lambda m, ids: imgs[ids], embed_texts=lambda prompts: heads)
    ds = SimpleNamespace(classes={"t": ClassTask(["a", "b", "c"], ["{}"])}, class_labels=np.array([0, 0, 1, 1]),
                         image_ids=lambda task, split: np.arange(4))
    r = class_ranks(emb, ds, "t")
    assert r.tolist() == [0, 0, 1, 2]
    assert (r == 0).tolist() == (np.argmax(imgs @ heads.T, 1) == ds.class_labels).tolist()
    assert class_recall(r, [1, 2, 3]) == {1: 50.0, 2: 75.0, 3: 100.0}


def test_an_imagefolder_split_by_a_split_file(tmp_path):
    from ccr.data import load_dataset

    root = make_imagefolder(tmp_path / "one", {"dog": 5, "cat": 5})
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    (tmp_path / "split.json").write_text(json.dumps({r: "test" if i % 3 == 0 else "train" for i, r in enumerate(rel)}))
    cfg = load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=imagefolder",
                             f"data.path={root}", f"data.split_file={tmp_path / 'split.json'}", "data.name=animals"])
    ds = load_dataset(cfg)
    assert ds.task_names == ["animals"] and len(ds.image_ids("animals", "test")) == 4
    assert len(ds.image_ids("animals", "train")) == 6 and ds.classes["animals"].names == ["cat", "dog"]
    (tmp_path / "split.json").write_text(json.dumps({rel[0]: "test"}))
    with pytest.raises(DataError, match="images in no split"):
        load_dataset(cfg)


@pytest.mark.parametrize("case, needle", [
    ("no_test", "expected train/ and test/ folders"),
    ("extra_class", "class folders in test/ that train/ does not have: bird"),
    ("unknown_kind", "'data.datasets[1].kind': 'csv' is not one of"),
    ("same_name", "'data.datasets[1].name': 'shapes' names data.datasets[0] too"),
    ("bad_template", "'data.datasets[1].templates[0]': 'a photo' must hold '{}' once"),
    ("nested", "'data.datasets[1].kind': 'sequence' is not one of"),
])
def test_a_bad_sequence_is_one_line_before_anything_is_written(tmp_path, case, needle):
    pets = make_split_folder(tmp_path / "pets")
    over = _over(tmp_path, pets)
    if case == "no_test":
        shutil.rmtree(pets / "test")
    elif case == "extra_class":
        make_imagefolder(pets / "test", {"bird": 2}, seed=3)
    else:
        entry = {"unknown_kind": f"{{name: pets, kind: csv, path: {pets}}}",
                 "same_name": f"{{name: shapes, kind: imagefolder, path: {pets}}}",
                 "bad_template": f"{{name: pets, kind: imagefolder, path: {pets}, templates: [a photo]}}",
                 "nested": "{name: pets, kind: sequence}"}[case]
        over = [o for o in over if not o.startswith("data.datasets=")]
        over.append(f"data.datasets=[{{name: shapes, kind: generated, n_tasks: 1}}, {entry}]")
    error = DataError if case in ("no_test", "extra_class") else ConfigError
    with pytest.raises(error, match=needle.replace("[", r"\[").replace("]", r"\]").replace("{}", r"\{\}")):
        Study(load_config(None, over), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_caption_datasets_chained_as_c_clip_does_are_one_task_each(tmp_path):
    """Two Karpathy-format datasets without a task assignment (C-CLIP's sequence): each whole dataset is one task,
    its splits kept, ids disjoint; a study on them reports one recall-matrix column per dataset."""
    from tests.karpathy_fixture import make_karpathy

    a = make_karpathy(tmp_path / "a", per_task=6, test_per_task=3)
    b = make_karpathy(tmp_path / "b", per_task=5, test_per_task=3)
    entries = ", ".join(f"{{name: {n}, kind: karpathy, path: {f['path']}, images: {f['images']}}}"
                        for n, f in (("flickr", a), ("coco", b)))
    cfg = load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=sequence",
                             f"data.datasets=[{entries}]", "train.epochs=1", "train.threads=1", "eval.anatomy=false",
                             "model.text.max_length=16"])
    study = Study(cfg, tmp_path / "run", progress=False)
    ds = study.ds
    assert ds.task_names == study.order == ["flickr", "coco"] and not ds.classes
    single = {n: Study(load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.kind=karpathy",
                                          f"data.path={f['path']}", f"data.images={f['images']}", f"data.name={n}"]),
                       tmp_path / f"one_{n}", progress=False).ds for n, f in (("flickr", a), ("coco", b))}
    for n, one in single.items():  # each entry is the dataset as it loads alone, all of it one task
        for split in ("train", "test"):
            assert len(ds.image_ids(n, split)) == len(one.image_ids(n, split)) > 0
        assert sorted(ds.captions[c] for c in ds.caption_ids(n, "test")) == sorted(
            one.captions[c] for c in one.caption_ids(n, "test"))
    assert not set(ds.image_ids("flickr", "train")) & set(ds.image_ids("coco", "train"))
    res = study.run()
    assert np.array(res["recall"]["t2i"]["1"]).shape == (2, 2)


def test_a_sequence_read_from_a_bucket_loads_what_the_local_folders_hold(s3, tmp_path):
    """The layout sweeps/mtil.yaml and sweeps/cclip.yaml read (moto's S3 on 127.0.0.1): an ImageFolder task with
    train/ and test/ under one prefix, staged whole (not just its top level), and a Karpathy caption dataset, each
    one task: the same items, classes and captions as the same folders read locally."""
    from ccr.data import load_dataset
    from ccr.io.storage import Storage
    from tests.karpathy_fixture import make_karpathy

    pets = make_split_folder(tmp_path / "pets")
    kp = make_karpathy(tmp_path / "kp", per_task=5, test_per_task=3)
    store = Storage(s3.uri("ccr", "seq"))
    store.upload_dir(pets, "mtil/pets")
    store.upload_dir(kp["path"].parent, "cclip/kp")
    rel = kp["path"].relative_to(kp["path"].parent).as_posix()
    images = kp["images"].relative_to(kp["path"].parent).as_posix()

    def entries(pets_at: str, kp_json: str, kp_images: str) -> str:
        return (f"data.datasets=[{{name: pets, kind: imagefolder, path: '{pets_at}'}}, "
                f"{{name: caps, kind: karpathy, path: '{kp_json}', images: '{kp_images}'}}]")

    common = [*TINY, "data.kind=sequence", "model.text.max_length=16"]
    local = load_dataset(load_config(None, [*common, f"data.cache_dir={tmp_path / 'c1'}",
                                            entries(str(pets), str(kp["path"]), str(kp["images"]))]))
    base = store.child("cclip/kp").uri
    remote = load_dataset(load_config(None, [*common, f"data.cache_dir={tmp_path / 'c2'}", entries(
        store.child("mtil/pets").uri, f"{base}/{rel}" if "?" not in base else base.replace("?", f"/{rel}?", 1),
        f"{base}/{images}" if "?" not in base else base.replace("?", f"/{images}?", 1))]))
    assert remote.task_names == local.task_names == ["pets", "caps"]
    for t in ("pets", "caps"):
        for split in ("train", "test"):
            assert len(remote.image_ids(t, split)) == len(local.image_ids(t, split)) > 0
    assert remote.classes["pets"] == local.classes["pets"] and remote.captions == local.captions
    assert (remote.class_labels == local.class_labels).all()
    assert (remote.images.load(np.arange(remote.n_images)) == local.images.load(np.arange(local.n_images))).all()
