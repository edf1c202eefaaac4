"""`ccr export RUN --task N DIR`: the folder transformers loads computes what the run's model computed after task
N (LoRA merged), for a complete CLIP and for the embedded default's towers; a task the run cannot give is one
line."""

from __future__ import annotations

import json

import pytest
import torch

from ccr.cli import main
from ccr.io.checkpoint import from_bytes
from ccr.study.configure import load_config
from ccr.study.runner import Study, checkpoint_path
from tests.karpathy_fixture import make_karpathy
from tests.pretrained_fixture import make_complete

LORA = ["model.adapter.kind=lora", "model.adapter.r=4", "model.adapter.alpha=8"]


def _after(cfg, out, step: int, order: list[str]) -> Study:
    """The run's model after task step + 1, restored from its checkpoint."""
    s = Study(cfg, out, progress=False)
    s.build()
    s.restore(from_bytes(checkpoint_path(out, step, order).read_bytes(), "ck", map_location="cpu"))
    return s.model.eval()


def test_a_clip_with_lora_exports_as_a_clip_folder_that_computes_the_same_embeddings(tmp_path):
    import transformers as T

    folder = make_complete(tmp_path / "clip", "clip", image_size=16)
    files = make_karpathy(tmp_path / "data", per_task=8, test_per_task=4)
    cfg = load_config(None, [
        "data.kind=karpathy", f"data.path={files['path']}", f"data.images={files['images']}",
        f"data.tasks_file={files['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", f"model.pretrained={folder}",
        "train.epochs=1", "train.batch_size=8", "train.warmup_steps=1", "train.threads=1", "eval.anatomy=false",
        "checkpoint.keep=2", "train.lr=0.01", *LORA])
    res = Study(cfg, tmp_path / "run", progress=False).run()
    assert main(["export", str(tmp_path / "run"), "--task", "1", str(tmp_path / "exp")]) == 0
    hf = T.CLIPModel.from_pretrained(tmp_path / "exp").eval()
    about = json.loads((tmp_path / "exp" / "ccr_export.json").read_text())
    assert about["task"] == 1 and about["task_name"] == res["task_order"][0] and about["adapter_merged"]
    assert not any("lora" in k for k in hf.state_dict())
    model = _after(cfg, tmp_path / "run", 0, res["task_order"])
    proc = T.AutoImageProcessor.from_pretrained(tmp_path / "exp", backend="pil")
    tok = T.AutoTokenizer.from_pretrained(tmp_path / "exp")
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    mean, std = torch.tensor(proc.image_mean).view(1, 3, 1, 1), torch.tensor(proc.image_std).view(1, 3, 1, 1)
    enc = tok(["a photo of a dog", "a red car"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        ours_i = model.encode_images(x)
        ref_i = hf.get_image_features(pixel_values=(x.float() * proc.rescale_factor - mean) / std)
        ours_t = model.encode_text(enc["input_ids"], enc["attention_mask"])
        ref_t = hf.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    ref_i, ref_t = (getattr(r, "pooler_output", r) for r in (ref_i, ref_t))
    torch.testing.assert_close(ours_i, torch.nn.functional.normalize(ref_i, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_t, torch.nn.functional.normalize(ref_t, dim=-1), atol=1e-5, rtol=1e-4)
    # the weights moved in task 1: the export is not the folder it started from
    start = T.CLIPModel.from_pretrained(folder)
    assert not torch.equal(start.logit_scale, hf.logit_scale) or any(
        not torch.equal(a, b) for a, b in zip(start.parameters(), hf.parameters(), strict=True))


def test_the_embedded_defaults_towers_export_as_two_transformers_folders_and_heads(tiny_cfg, tmp_path):
    import transformers as T
    from safetensors.torch import load_file

    cfg = tiny_cfg("data.n_tasks=2", "train.threads=1", "eval.anatomy=false")
    res = Study(cfg, tmp_path / "run", progress=False).run()
    assert main(["export", str(tmp_path / "run"), "--task", "2", str(tmp_path / "exp")]) == 0
    model = _after(cfg, tmp_path / "run", 1, res["task_order"])
    vit = T.AutoModel.from_pretrained(tmp_path / "exp" / "image").eval()
    bert = T.AutoModel.from_pretrained(tmp_path / "exp" / "text").eval()
    tok = T.AutoTokenizer.from_pretrained(tmp_path / "exp" / "text")
    heads = load_file(str(tmp_path / "exp" / "heads.safetensors"))
    pixels = torch.randn(2, 3, model.cfg.image.image_size, model.cfg.image.image_size)
    ids = tok(["a red circle", "two blue squares"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(vit(pixel_values=pixels).last_hidden_state,
                                   model.image_encoder(pixel_values=pixels).last_hidden_state)
        torch.testing.assert_close(bert(**ids).last_hidden_state, model.text_encoder(**ids).last_hidden_state)
    for k, v in model.image_proj.state_dict().items():
        assert torch.equal(heads[f"image_proj.{k}"], v)
    assert torch.equal(heads["logit_scale"], model.logit_scale.detach().reshape(1))
    assert json.loads((tmp_path / "exp" / "ccr_export.json").read_text())["kind"] == "towers"


@pytest.mark.parametrize("case, needle", [
    ("task 0", "--task 0: the run's sequence has tasks 1 to 3"),
    ("task 4", "--task 4: the run's sequence has tasks 1 to 3"),
    ("not reached", "--task 3: the run has learned 2 of its 3 tasks"),
    ("pruned", "--task 1: the run kept no checkpoint after it"),
    ("no run", "no config.yaml here: not a ccr run folder"),
])
def test_an_export_the_run_cannot_give_is_one_line(tiny_cfg, tmp_path, capsys, case, needle):
    run = tmp_path / "run"
    if case != "no run":
        Study(tiny_cfg("data.n_tasks=3", "train.threads=1", "train.epochs=1", "eval.anatomy=false",
                       "checkpoint.keep=1"), run, progress=False).run()
    else:
        run.mkdir()
    if case == "not reached":  # as a run stopped after task 2 reads
        res = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps({**res, "tasks_done": 2, "status": "running"}))
    task = {"task 0": 0, "task 4": 4, "not reached": 3, "pruned": 1, "no run": 1}[case]
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    capsys.readouterr()  # the study's own log lines
    assert main(["export", str(run), "--task", str(task), str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "exp").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # export only reads the run


def test_a_run_in_a_bucket_exports_from_its_uri(s3, tiny_cfg, tmp_path, capsys):
    """RUN as the storage URI a cluster run writes to (moto's S3 on 127.0.0.1, credentials in the URI): the
    export reads the checkpoint and tokenizer from the bucket, and ccr_export.json names the run without them."""
    import transformers as T

    uri = s3.uri("ccr", "export-run").replace("s3://", "s3://KEY:SECRET@")
    cfg = tiny_cfg("data.n_tasks=2", "train.threads=1", "eval.anatomy=false", f"data.cache_dir={tmp_path / 'c'}")
    res = Study(cfg, uri, progress=False).run()
    capsys.readouterr()
    assert main(["export", uri, "--task", "2", str(tmp_path / "exp")]) == 0
    about = (tmp_path / "exp" / "ccr_export.json").read_text()
    assert "SECRET" not in about and "SECRET" not in capsys.readouterr().out
    assert json.loads(about)["task_name"] == res["task_order"][1]
    assert T.AutoModel.from_pretrained(tmp_path / "exp" / "image").config.model_type == "vit"
