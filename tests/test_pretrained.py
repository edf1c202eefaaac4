"""Complete pretrained dual encoders (CLIP, SigLIP), checked against transformers itself: the zero-shot row,
the losses, the preprocessing; refusals before training; caches keyed by preprocessing and by weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ccr.config.schema import ConfigError
from ccr.study.configure import load_config
from ccr.study.runner import Study
from tests.karpathy_fixture import make_karpathy
from tests.pretrained_fixture import make_complete, make_vit_with_pooler

SMALL = ["train.epochs=1", "train.batch_size=8", "train.warmup_steps=1", "eval.anatomy=true", "train.threads=1"]


def karpathy_cfg(tmp_path: Path, folder: Path, *extra: str):
    files = make_karpathy(tmp_path / "data", per_task=16, test_per_task=8)
    sets = ["data.kind=karpathy", f"data.path={files['path']}", f"data.images={files['images']}",
            f"data.tasks_file={files['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}",
            f"model.pretrained={folder}", *SMALL, *extra]
    return load_config(None, sets), files


def _recall(sim: np.ndarray, hit: np.ndarray, k: int) -> float:
    """sim (nq, ng), hit (nq, ng) bool -> % of queries with a hit among the top k."""
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return 100.0 * float(np.mean(np.take_along_axis(hit, top, axis=1).any(axis=1)))


def reference_row(folder: Path, kind: str, files: dict, order: list[str], ks=(1, 5, 10)) -> dict:
    """The zero-shot row computed with transformers alone: the folder's processor (PIL backend, which is what
    decodes in ccr), tokenizer and get_image_features / get_text_features; recall in each task's gallery."""
    import transformers as T

    model = (T.CLIPModel if kind == "clip" else T.SiglipModel).from_pretrained(folder).eval()
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    tok = T.AutoTokenizer.from_pretrained(folder)
    data = json.loads(Path(files["path"]).read_text())
    tasks = json.loads(Path(files["tasks_file"]).read_text())
    out = {"i2t": {k: [] for k in ks}, "t2i": {k: [] for k in ks}}
    for task in order:
        entries = [e for e in data["images"] if tasks[e["filename"]] == task and e["split"] == "test"]
        ims = [Image.open(Path(files["images"]) / e["filepath"] / e["filename"]).convert("RGB") for e in entries]
        caps = [s["raw"] for e in entries for s in e["sentences"]]
        owner = np.array([i for i, e in enumerate(entries) for _ in e["sentences"]])
        with torch.no_grad():
            fi = model.get_image_features(**proc(images=ims, return_tensors="pt"))
            enc = tok(caps, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                      truncation=True, return_tensors="pt")
            ft = model.get_text_features(**enc)
        fi = F.normalize(getattr(fi, "pooler_output", fi), dim=-1).numpy()
        ft = F.normalize(getattr(ft, "pooler_output", ft), dim=-1).numpy()
        for k in ks:
            out["i2t"][k].append(_recall(fi @ ft.T, owner[None, :] == np.arange(len(entries))[:, None], k))
            out["t2i"][k].append(_recall(ft @ fi.T, np.arange(len(entries))[None, :] == owner[:, None], k))
    return out


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_row_equals_transformers_and_a_study_trains(tmp_path, kind):
    folder = make_complete(tmp_path / kind, kind)
    extra = ["train.loss=siglip"] if kind == "siglip" else []
    cfg, files = karpathy_cfg(tmp_path, folder, *extra)
    study = Study(cfg, tmp_path / "out", progress=False)
    assert study.cfg.model.embed_dim == (16 if kind == "clip" else 32)  # from the checkpoint
    res = study.run()
    ref = reference_row(folder, kind, files, res["task_order"])
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert res["zero_shot"]["recall"][d][str(k)] == pytest.approx(ref[d][k], abs=1e-6), (d, k)
            assert res["metrics"][f"zero_shot/{d}/R@{k}"] == pytest.approx(np.mean(ref[d][k]))
    # the study trained: loss finite, weights moved, the last row is not θ0's
    assert res["status"] == "complete" and all(np.isfinite(s["mean_loss"]) for s in res["train"])
    import transformers as T

    start = (T.CLIPModel if kind == "clip" else T.SiglipModel).from_pretrained(folder)
    assert not torch.equal(study.model.text_encoder.embeddings.token_embedding.weight,
                           start.text_model.embeddings.token_embedding.weight)
    assert "stability_from_init" in res["anatomy"]
    # the saved config keeps the path and the resolved embedding size; resuming it is the same study
    assert Study(cfg, tmp_path / "out", progress=False).cfg.model.embed_dim == study.cfg.model.embed_dim


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_embeddings_and_loss_equal_transformers(tmp_path, kind):
    """Image and text embeddings equal get_image_features / get_text_features (the folder's processor and
    tokenizer), and ccr's loss (infonce for CLIP, siglip for SigLIP) equals the model's own return_loss."""
    import transformers as T

    from ccr.data import load_dataset
    from ccr.models import build_for, build_tokenizer, losses, pixels_for

    folder = make_complete(tmp_path / kind, kind)
    cfg, files = karpathy_cfg(tmp_path, folder, *(["train.loss=siglip"] if kind == "siglip" else []))
    ds = load_dataset(cfg, pixels_for(cfg))
    build_tokenizer(cfg.model.text, [], str(folder)).save_pretrained(tmp_path / "tok")
    from ccr.models import resolve_model

    model, tok, tokens = build_for(resolve_model(cfg), ds, tmp_path / "tok")
    model.eval()
    ref = (T.CLIPModel if kind == "clip" else T.SiglipModel).from_pretrained(folder).eval()
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    ids = np.arange(8)
    paths = [ds.images.paths[i] if hasattr(ds.images, "paths") else None for i in ids]
    data = json.loads(Path(files["path"]).read_text())["images"]
    ims = [Image.open(Path(files["images"]) / data[i]["filepath"] / data[i]["filename"]).convert("RGB") for i in ids]
    del paths
    caps = ds.captions_of(ids)[:8]
    with torch.no_grad():
        ours_i = model.encode_images(ds.images.load(ids))
        tid, mask = tokens.batch(caps)
        ours_t = model.encode_text(tid, mask)
        pix = proc(images=ims, return_tensors="pt")
        enc = tok([ds.captions[c] for c in caps], padding="max_length", truncation=True,
                  max_length=ref.config.text_config.max_position_embeddings, return_tensors="pt")
        fi = ref.get_image_features(**pix)
        ft = ref.get_text_features(**enc)
        fi = F.normalize(getattr(fi, "pooler_output", fi), dim=-1)
        ft = F.normalize(getattr(ft, "pooler_output", ft), dim=-1)
        torch.testing.assert_close(ours_i, fi, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours_t, ft, atol=2e-5, rtol=1e-4)
        theirs = ref(**enc, **pix, return_loss=True).loss
        ours = losses.total(losses.contrastive(cfg.train, ours_i, ours_t, model))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)
    assert set(model.parts()) == {
        "image_encoder", "text_encoder", "image_proj", "text_proj", "scale"}
    n_parts = sum(len(v) for v in model.parts().values())
    assert n_parts == len(list(model.parameters()))  # every parameter in exactly one part


def test_image_size_mismatch_is_refused_before_anything_trains(tmp_path, tiny_overrides):
    clip = make_complete(tmp_path / "clip", "clip", image_size=16)
    with pytest.raises(ConfigError, match=r"data.image_size.*takes 16 px images: leave data.image_size unset, or "
                                          r"set it to 16"):
        Study(load_config(None, [*tiny_overrides, "data.image_size=32", f"model.pretrained={clip}"]), tmp_path / "a")
    vit = make_vit_with_pooler(tmp_path / "vit", image_size=16)
    with pytest.raises(ConfigError, match=r"model.image.image_size.*takes 16 px images"):
        Study(load_config(None, [*tiny_overrides, "data.image_size=32", "model.image.image_size=32",
                                 f"model.image.pretrained={vit}"]), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"'data.image_size' \(32\) and 'model.image.image_size' \(16\) differ"):
        Study(load_config(None, [*tiny_overrides, "data.image_size=32"]), tmp_path / "c")
    with pytest.raises(ConfigError, match=r"model.embed_dim.*embeds in 16 dimensions"):
        Study(load_config(None, [*tiny_overrides, "model.embed_dim=8", f"model.pretrained={clip}"]), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")  # refused before anything was written


def test_model_pretrained_is_read_once_and_handed_down(tmp_path, tiny_overrides, monkeypatch):
    """A study reads its complete model's folder once (ccr.models.model_source) and hands the description to the
    data (pixels), the tokenizer, the model and the pretraining key, instead of resolving the string again; with
    data.image_size unset the generated images take the model's size."""
    import ccr.models.build
    import ccr.models.dual_encoder
    import ccr.models.pretrained

    clip = make_complete(tmp_path / "clip", "clip", image_size=16)
    calls = []
    real = ccr.models.pretrained.describe.__wrapped__
    monkeypatch.setattr(ccr.models.pretrained, "describe", lambda spec: (calls.append(spec), real(spec))[1])
    sets = [s for s in tiny_overrides if not s.startswith(("data.image_size", "model.image."))]
    study = Study(load_config(None, [*sets, f"model.pretrained={clip}"]), tmp_path / "out", progress=False)
    study.prepare_out()
    study.build()
    assert calls == [str(clip)] and study.cfg.data.image_size == 16 and study.source.complete.folder == clip
    assert study.ds.images.load([0]).shape[-1] == 16


def test_a_hub_id_offline_is_one_line(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from ccr.models.pretrained import local_folder

    local_folder.cache_clear()
    with pytest.raises(ConfigError, match=r"'someone/no-such-clip' is no local folder, and the hub id could not"):
        Study(load_config(None, [*tiny_overrides, "model.pretrained=someone/no-such-clip"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="folder not found: ./no/such/folder"):
        Study(load_config(None, [*tiny_overrides, "model.pretrained=./no/such/folder"]), tmp_path / "a")


def test_weights_by_storage_uri_are_staged_once(tmp_path, tiny_overrides, monkeypatch, s3):
    """model.pretrained as a URI: copied into the node's cache once (a marker written last), then read."""
    from ccr.io.storage import Storage
    from ccr.models import pretrained

    clip = make_complete(tmp_path / "clip", "clip")
    monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
    uri = s3.uri("ccr", "weights/clip")
    Storage(uri).upload_dir(clip, "")
    pretrained.local_folder.cache_clear()
    a = pretrained.local_folder(uri)
    assert (a.parent / ".ccr-complete").is_file() and not (a / ".ccr-complete").exists()
    assert (a / "config.json").read_bytes() == (clip / "config.json").read_bytes()
    assert pretrained.local_folder(f"file://{clip}") == clip.resolve()  # a file:// URI is a local folder
    pretrained.local_folder.cache_clear()
    calls = []
    import ccr.io.staging

    monkeypatch.setattr(ccr.io.staging, "node_lock", lambda p: calls.append(p))  # a second staging would lock
    assert pretrained.local_folder(uri) == a and not calls
    assert pretrained.fingerprint(uri) == pretrained.fingerprint(str(clip))


def test_preprocessing_is_part_of_the_image_cache_key(tmp_path):
    """Two models whose processors resize differently decode into two image caches; the pixels differ."""
    from ccr.data import load_dataset
    from ccr.models import pixels_for

    a = make_complete(tmp_path / "a", "clip", resample=3)
    b = make_complete(tmp_path / "b", "clip", resample=0)  # nearest
    ca, _ = karpathy_cfg(tmp_path, a, "data.image_cache=true")
    cb = load_config(None, [*(f"data.{k}={getattr(ca.data, k)}" for k in ("kind", "path", "images", "tasks_file",
                                                                         "cache_dir")),
                            "data.image_cache=true", f"model.pretrained={b}"])
    da, db = load_dataset(ca, pixels_for(ca)), load_dataset(cb, pixels_for(cb))
    caches = sorted((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(caches) == 2
    assert not np.array_equal(da.images.load(np.arange(4)).numpy(), db.images.load(np.arange(4)).numpy())
    # and each equals what that processor makes of the file
    import transformers as T

    data = json.loads(Path(ca.data.path).read_text())["images"]
    im = Image.open(Path(ca.data.images) / data[0]["filepath"] / data[0]["filename"]).convert("RGB")
    for folder, ds in ((a, da), (b, db)):
        proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
        ref = proc(images=[im], do_normalize=False, do_rescale=False, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ds.images.load(np.array([0]))[0].numpy(), ref, atol=0.5)


def test_other_weights_at_the_same_path_miss_the_pretraining_cache(tmp_path):
    folder = tmp_path / "weights"
    make_complete(folder, "clip", seed=0)
    cfg, _ = karpathy_cfg(tmp_path, folder, "tasks.pretrain=[animal]", "tasks.order=[vehicle]")

    def source(out: str) -> str:
        s = Study(cfg, tmp_path / out, progress=False)
        s.build()
        return s.pretrained["from"]

    assert source("a") == "trained"
    assert source("b") == "cache"
    shutil.rmtree(folder)
    make_complete(folder, "clip", seed=1)  # other weights, same path
    assert source("c") == "trained"


def test_tower_parameters_no_loss_reaches_are_frozen(tmp_path):
    """A SigLIP folder as the text tower: ccr pools its last hidden states, so the text head gets no gradient;
    it is frozen (DDP needs every trainable parameter to get one), everything else trains."""
    from ccr.models import build_model

    cfg = load_config(None, [f"model.text.pretrained={make_complete(tmp_path / 's', 'siglip')}",
                             f"model.image.pretrained={make_vit_with_pooler(tmp_path / 'v')}",
                             "model.image.image_size=16", "model.text.max_length=16"])
    model = build_model(cfg.model, 10, cfg.train)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"text_encoder.head.weight", "text_encoder.head.bias"}
    assert not any(n.startswith("image_encoder.pooler") for n, _ in model.named_parameters())  # not loaded
    i, t = model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([[1, 2], [2, 1]]), torch.ones(2, 2))
    (i.sum() + t.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p is not model.logit_scale)


def test_freeze_backbone_trains_only_the_projections_of_a_complete_model(tmp_path):
    folder = make_complete(tmp_path / "clip", "clip")
    cfg, _ = karpathy_cfg(tmp_path, folder, "model.freeze=backbone")
    s = Study(cfg, tmp_path / "out", progress=False)
    before = {k: v.clone() for k, v in s.model.state_dict().items()} if hasattr(s, "model") else None
    s.run()
    assert before is None
    after = s.model.state_dict()
    import transformers as T

    start = T.CLIPModel.from_pretrained(folder).state_dict()
    assert torch.equal(after["image_encoder.encoder.layers.0.mlp.fc1.weight"],
                       start["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert not torch.equal(after["image_proj.weight"], start["visual_projection.weight"])


def test_the_clip_sweep_files_are_valid_configs():
    """sweeps/clip.yaml's base and its fixed keys build a valid config (its data and weights are the user's)."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    sweep = yaml.safe_load((repo / "sweeps" / "clip.yaml").read_text())
    cfg = load_config(repo / "sweeps" / sweep["base"], [f"{k}={json.dumps(v)}" for k, v in sweep["set"].items()])
    assert cfg.model.pretrained == "s3://BUCKET/models/clip-vit-base-patch16" and cfg.model.embed_dim is None
    assert cfg.index.compare == ["no_reindex"] and cfg.eval.transfer and cfg.eval.control == ["kitchen", "furniture"]


def _partial_tokenizer(folder: Path, case: str) -> None:
    """A folder copied in part, as a user meets it: the tokenizer files gone, or a hub-style tokenizer
    whose vocabulary holds only its special tokens, or a tokenizer of other words."""
    if case == "no tokenizer files":
        (folder / "tokenizer.json").unlink()
    elif case == "empty vocabulary":  # what transformers builds from a CLIP folder without its vocabulary
        (folder / "tokenizer.json").unlink()
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**tc, "tokenizer_class": "CLIPTokenizer",
                                                                  "unk_token": "<|endoftext|>"}))
        (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
        (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.mark.parametrize("case, needle", [
    ("no tokenizer files", "has no tokenizer (none of: tokenizer.json, vocab.json + merges.txt"),
    ("empty vocabulary", "cannot encode this dataset: 100% of the training captions' tokens are unknown"),
    ("other words", "of the training captions' tokens are unknown (<unk>)"),
])
def test_a_model_folder_without_its_tokenizer_is_one_line_before_training(case, needle, tmp_path, tiny_overrides,
                                                                          capsys):
    from ccr.cli import main
    from tests.cli import _sets

    corpus = ["zebra quartz violin meadow"] if case == "other words" else None
    folder = make_complete(tmp_path / "clip", "clip", corpus=corpus)
    _partial_tokenizer(folder, case)
    capsys.readouterr()  # the fixture's own output
    out = tmp_path / "out"
    rc = main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, f"model.pretrained={folder}"])])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and str(folder) in err and "Traceback" not in err, err[-1500:]
    assert len(err.strip().splitlines()) == 1, err
    assert not list(out.glob("checkpoints/*")) and not (out / "results.json").exists()  # nothing trained


def test_a_text_tower_without_its_vocabulary_is_refused(tmp_path, tiny_overrides, capsys):
    from ccr.cli import main
    from tests.cli import _sets

    folder = make_complete(tmp_path / "siglip", "siglip")
    (folder / "tokenizer.json").unlink()
    capsys.readouterr()
    assert main(["run", "--quiet", "--out", str(tmp_path / "a"),
                 *_sets([*tiny_overrides, f"model.text.pretrained={folder}"])]) == 2
    assert f"model.text.pretrained: {folder} has no tokenizer" in capsys.readouterr().err


def test_loading_a_complete_model_prints_no_progress_bars(tmp_path, tiny_overrides, capfd):
    from ccr.models import build_model
    from ccr.models.pretrained import describe

    folder = make_complete(tmp_path / "clip", "clip")
    capfd.readouterr()
    cfg = load_config(None, [*tiny_overrides, f"model.pretrained={folder}"])
    build_model(cfg.model, 0, complete=describe(str(folder)))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err, err


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file, changes, needle", [
    ("config.json", {"projection_dim": "abc"}, "projection_dim must be a positive whole number, got 'abc'"),
    ("config.json", {"vision_config": [1, 2]}, "vision_config must be an object, got list"),
    ("preprocessor_config.json", {"image_mean": "abc"}, "image_mean must be 3 numbers (one per channel), got 'abc'"),
    ("preprocessor_config.json", {"image_mean": [0.5]}, "image_mean must be 3 numbers"),
    ("preprocessor_config.json", {"image_std": [0, 0, 0]}, "image_std must be above 0 for every channel"),
    ("config.json", "deep", "is nested too deeply to be a config"),
])
def test_malformed_values_in_a_model_folder_are_one_line(file, changes, needle, tmp_path, tiny_overrides, capsys):
    from ccr.cli import main
    from ccr.models.pretrained import describe
    from tests.cli import _sets

    folder = make_complete(tmp_path / "clip", "clip")
    if changes == "deep":
        (folder / file).write_text("[" * 100_000 + "]" * 100_000)
    else:
        _edit_json(folder / file, **changes)
    describe.cache_clear()
    capsys.readouterr()
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"),
                 *_sets([*tiny_overrides, f"model.pretrained={folder}"])]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_tower_folder_transformers_cannot_read_is_one_line(tmp_path, tiny_overrides, capsys):
    from ccr.cli import main
    from tests.cli import _sets

    vit = make_vit_with_pooler(tmp_path / "vit", image_size=16)
    _edit_json(vit / "config.json", hidden_size="abc")
    capsys.readouterr()
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"),
                 *_sets([*tiny_overrides, f"model.image.pretrained={vit}"])]) == 2
    err = capsys.readouterr().err
    assert "model.image.pretrained:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
