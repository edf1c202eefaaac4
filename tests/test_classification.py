"""Zero-shot classification (eval.classification): θ0's top-1 against transformers' own features on the same
ImageFolder, the row after every task, its metrics, checkpointing, and one clear line for each bad set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ccr.config.schema import ConfigError
from ccr.data import DataError
from ccr.measure.classification import class_heads, top1
from ccr.measure.results_check import problem
from ccr.study.configure import load_config
from ccr.study.runner import Study, checkpoint_path
from tests.karpathy_fixture import make_karpathy
from tests.pretrained_fixture import make_complete

TEMPLATES = ["a photo of a {}.", "a {} in the top left"]
CLASSES = {"dog": 4, "cat": 3, "red_car": 5}  # names the fixture tokenizer knows ('red car' from 'red_car')


def make_imagefolder(root: Path, classes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """An ImageFolder tree: one folder per class, images of odd sizes and modes (one nested a folder deeper),
    and a file that is no image (left out)."""
    rng = np.random.default_rng(seed)
    for c, n in (classes or CLASSES).items():
        for j in range(n):
            folder = root / c / ("more" if j == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(18, 40)), int(rng.integers(18, 40))
            im = Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
            im.convert("L" if j % 3 == 2 else "RGB").save(folder / f"{c}_{j}.{'png' if j % 2 else 'jpg'}")
        (root / c / "notes.txt").write_text("not an image")
    return root


def _clip_cfg(tmp_path: Path, folder: Path, sets: str, *extra: str):
    files = make_karpathy(tmp_path / "data", per_task=8, test_per_task=4)
    return load_config(None, [
        "data.kind=karpathy", f"data.path={files['path']}", f"data.images={files['images']}",
        f"data.tasks_file={files['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", f"model.pretrained={folder}",
        "train.epochs=1", "train.batch_size=8", "train.warmup_steps=1", "train.threads=1", "eval.anatomy=false",
        f"eval.classification={sets}", *extra])


def reference_top1(folder: Path, images: Path, templates: list[str]) -> tuple[float, np.ndarray, np.ndarray]:
    """θ0's top-1 with transformers alone: the folder's processor (PIL backend) and tokenizer, get_image_features /
    get_text_features, CLIP's zero-shot head (mean of each class's normalised prompt embeddings, normalised)."""
    import transformers as T

    model = T.CLIPModel.from_pretrained(folder).eval()
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    tok = T.AutoTokenizer.from_pretrained(folder)
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    paths = [(i, f) for i, c in enumerate(classes) for f in sorted((images / c).rglob("*")) if f.suffix != ".txt"
             and f.is_file()]
    prompts = [t.replace("{}", c.replace("_", " ")) for c in classes for t in templates]
    with torch.no_grad():
        fi = model.get_image_features(**proc(images=[Image.open(f).convert("RGB") for _, f in paths],
                                             return_tensors="pt"))
        enc = tok(prompts, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                  truncation=True, return_tensors="pt")
        ft = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    fi = F.normalize(getattr(fi, "pooler_output", fi), dim=-1).numpy()
    ft = F.normalize(getattr(ft, "pooler_output", ft), dim=-1).numpy()
    heads = ft.reshape(len(classes), len(templates), -1).mean(1)
    heads /= np.linalg.norm(heads, axis=1, keepdims=True)
    labels = np.array([i for i, _ in paths])
    return 100.0 * float(np.mean((fi @ heads.T).argmax(1) == labels)), fi, ft


def test_theta0_top1_equals_transformers_and_a_row_follows_every_task(tmp_path):
    folder = make_complete(tmp_path / "clip", "clip", image_size=16)
    images = make_imagefolder(tmp_path / "pets")
    sets = f"[{{name: pets, path: {images}, templates: {TEMPLATES}}}]".replace("'", '"')
    cfg = _clip_cfg(tmp_path, folder, sets)
    ref, ref_images, ref_prompts = reference_top1(folder, images, TEMPLATES)

    theta0 = Study(cfg, tmp_path / "theta0", progress=False)
    theta0.build()
    (s,) = theta0.classification
    assert s.names == ["cat", "dog", "red car"] and len(s.folder.paths) == sum(CLASSES.values())
    emb = theta0.embedder(theta0.model)
    np.testing.assert_allclose(emb.embed_store(s.images, "pets"), ref_images, atol=1e-5)
    np.testing.assert_allclose(emb.embed_texts(s.prompts), ref_prompts, atol=1e-5)
    assert top1(emb, s) == pytest.approx(ref)

    res = Study(cfg, tmp_path / "out", progress=False).run()
    n = len(res["task_order"])
    row = res["classification"]["pets"]
    assert row["top1"][0] == pytest.approx(ref) and len(row["top1"]) == n + 1
    assert row["classes"] == 3 and row["images"] == 12 and row["templates"] == TEMPLATES
    assert all(v * 12 / 100 == pytest.approx(round(v * 12 / 100)) for v in row["top1"])  # % of 12 images
    m = res["metrics"]
    assert m["classification/pets/top1"] == pytest.approx(row["top1"][-1])
    if row["top1"][0]:
        assert m["classification/pets/retention"] == pytest.approx(100 * row["top1"][-1] / row["top1"][0])
    assert problem(res) is None


def test_class_heads_are_clips_mean_of_normalised_prompts():
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(6, 4))
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    heads = class_heads(prompts, 3)
    for c in range(3):
        mean = prompts[2 * c:2 * c + 2].mean(0)
        np.testing.assert_allclose(heads[c], mean / np.linalg.norm(mean))


def test_the_classification_row_survives_a_resume(tiny_cfg, tmp_path):
    images = make_imagefolder(tmp_path / "shapes", {"round_thing": 3, "box": 4})
    cfg = tiny_cfg("data.n_tasks=2", "train.threads=1", f"eval.classification=[{{name: shapes, path: {images}, "
                   "classes: {box: square}}]")
    full = Study(cfg, tmp_path / "a", progress=False).run()
    assert len(full["classification"]["shapes"]["top1"]) == 3
    from ccr.measure.tables import render  # what `ccr run` prints at the end

    line = next(ln for ln in render(full).splitlines() if ln.strip().startswith("shapes "))
    assert line.split()[1:] == " -> ".join(f"{v:.1f}" for v in full["classification"]["shapes"]["top1"]).split()
    Study(cfg, tmp_path / "b", progress=False).run()
    checkpoint_path(tmp_path / "b", 1, full["task_order"]).unlink()  # as if killed during task 2
    (tmp_path / "b" / "results.json").unlink()
    again = Study(cfg, tmp_path / "b", progress=False).run()
    assert again["resumes"] == [0] and again["classification"] == full["classification"]
    assert {k: v for k, v in again["metrics"].items() if k.startswith("classification/")} == {
        k: v for k, v in full["metrics"].items() if k.startswith("classification/")}
    # without sets, results.json says so and no metric is invented
    plain = Study(tiny_cfg("data.n_tasks=2", "train.threads=1"), tmp_path / "c", progress=False).run()
    assert plain["classification"] is None and not any(k.startswith("classification/") for k in plain["metrics"])
    # analysis reads studies with and without sets side by side
    from ccr.analysis.load import collect, per_run_summary, tidy

    c = collect(tmp_path)
    assert not c.corrupt and len(c.runs) == 3
    assert len(per_run_summary(c)) and len(tidy(c))


def _bad(tmp_path: Path, case: str) -> str:
    root = tmp_path / "set"
    if case == "no classes":
        root.mkdir()
        (root / "readme.txt").write_text("x")
    elif case == "a class without images":
        make_imagefolder(root, {"dog": 2})
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("x")
    elif case == "an unreadable image":
        make_imagefolder(root, {"dog": 2, "cat": 2})
        (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    else:
        make_imagefolder(root, {"dog": 2, "cat": 2})
    return str(root)


@pytest.mark.parametrize("case, entry, error, needle", [
    ("no classes", "{name: x, path: P}", DataError, "has no class folders"),
    ("a class without images", "{name: x, path: P}", DataError, "class folders without images (files ending"),
    ("an unreadable image", "{name: x, path: P}", DataError, "broken.png"),
    ("missing", "{name: x, path: P/nowhere}", DataError, "is not a folder"),
    ("ok", "{name: x, path: P, templates: [a photo]}", ConfigError, "must hold '{}' once"),
    ("ok", "{name: x, path: P, templates: []}", ConfigError, "templates': empty"),
    ("ok", "{name: 'x y', path: P}", ConfigError, "eval.classification[0].name"),
    ("ok", "{path: P}", ConfigError, "a set needs a name"),
    ("ok", "{name: x}", ConfigError, "eval.classification[0].path"),
    ("ok", "{name: x, path: P, template: ['a {}']}", ConfigError,
     "unknown config key 'eval.classification[0].template'"),
    ("ok", "{name: x, path: P, classes: [one]}", DataError, "1 names for the 2 class folders"),
    ("ok", "{name: x, path: P, classes: {cow: a cow}}", DataError, "no class folder named 'cow'"),
    ("ok", "{name: x, path: P}, {name: x, path: P}", ConfigError, "two sets named ['x']"),
])
def test_a_bad_classification_set_is_one_line_before_training(tiny_cfg, tmp_path, case, entry, error, needle):
    path = _bad(tmp_path, case)
    with pytest.raises(error) as e:
        Study(tiny_cfg("data.n_tasks=2", f"eval.classification=[{entry.replace('P', path)}]"), tmp_path / "out",
              progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written, let alone trained


def test_a_set_in_a_bucket_is_staged_and_measures_what_the_local_folder_does(s3, tiny_cfg, tmp_path):
    """eval.classification's path as a URI (moto's S3 on 127.0.0.1): staged once per node, then the same
    top-1 row as the same folder read locally."""
    from ccr.io.staging import events
    from ccr.io.storage import Storage

    images = make_imagefolder(tmp_path / "pets", {"dog": 3, "cat": 3})
    store = Storage(s3.uri("ccr", "sets"))
    store.upload_dir(images, "pets")
    uri = store.child("pets").uri
    common = ["data.n_tasks=2", "train.threads=1", "eval.anatomy=false", f"data.cache_dir={tmp_path / 'cache'}"]
    local = Study(tiny_cfg(*common, f"eval.classification=[{{name: pets, path: {images}}}]"), tmp_path / "l",
                  progress=False).run()
    remote = Study(tiny_cfg(*common, f"eval.classification=[{{name: pets, path: '{uri}'}}]"),
                   tmp_path / "r", progress=False).run()
    assert remote["classification"]["pets"]["top1"] == local["classification"]["pets"]["top1"]
    assert remote["classification"]["pets"]["images"] == 6
    staged = [e for e in events(tmp_path / "cache") if e["event"] == "staged"]  # 6 images, 2 notes
    assert len(staged) == 1 and staged[0]["files"] == 8 and "eval.classification[0]" in staged[0]["what"]
