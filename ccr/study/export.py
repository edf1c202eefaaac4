"""`ccr export RUN --task N DIR`: the model after task N of a run, as a folder its own library loads.

A complete CLIP or SigLIP becomes the transformers folder it came from, with the weights after task N
(`CLIPModel.from_pretrained(DIR)`, its tokenizer and image processor beside them); towers with heads (the
embedded default, BERT/ViT towers) become `image/` and `text/` (each `save_pretrained`, the tokenizer in
`text/`) and `heads.safetensors` (the projections and the logit scale). LoRA adapters are merged into the
weights. `ccr_export.json` says what the folder holds and how ccr embeds with it.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from ccr.errors import ConfigError
from ccr.io.checkpoint import from_bytes
from ccr.io.storage import Storage
from ccr.study.configure import build_config
from ccr.study.outputs import TOKENIZER, local_copy
from ccr.study.resume import checkpoint_name

log = logging.getLogger(__name__)


def _merged(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of `encoder` with its LoRA layers merged into their base layers and removed (itself when it has
    none): a plain transformers module again."""
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in encoder.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        return encoder
    encoder = copy.deepcopy(encoder)
    for name, _ in layers:
        parent_name, _, attr = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        layer = getattr(parent, attr)
        layer.merge()
        setattr(parent, attr, layer.get_base_layer())
    return encoder


def _run_record(store: Storage) -> tuple[dict[str, Any], dict[str, Any]]:
    if not store.is_file("config.yaml"):
        raise ConfigError(f"{store.display()}: no config.yaml here: not a ccr run folder")
    if not store.is_file("results.json"):
        raise ConfigError(f"{store.display()}: no results.json: the run has not finished a task yet")
    return yaml.safe_load(store.read_text("config.yaml")), json.loads(store.read_text("results.json"))


def export(run: str | Path, task: int, dest: str | Path) -> Path:
    """Write the model of `run` after its task `task` (counted from 1) to the folder `dest`; returns it."""
    from ccr.models import load_tokenizer, model_source
    from ccr.models.adapters import load_trainable_state
    from ccr.models.build import seeded_model

    store = Storage(str(run))
    tree, res = _run_record(store)
    order, done = res["task_order"], int(res.get("tasks_done", len(res["task_order"])))
    if not 1 <= task <= len(order):
        raise ConfigError(f"--task {task}: the run's sequence has tasks 1 to {len(order)} ({', '.join(order)})")
    if task > done:
        raise ConfigError(f"--task {task}: the run has learned {done} of its {len(order)} tasks; export one of "
                          f"1 to {done}")
    name = checkpoint_name(task - 1, order)
    if not store.is_file(name):
        kept = [i + 1 for i in range(len(order)) if store.is_file(checkpoint_name(i, order))]
        raise ConfigError(f"--task {task}: the run kept no checkpoint after it (checkpoint.keep keeps the newest; "
                          f"kept: tasks {kept}); rerun with checkpoint.keep={len(order)} to export every task")
    cfg = build_config(tree)
    if cfg.data.kind == "precomp":
        raise ConfigError("ccr export: a run on precomputed image features (data.kind=precomp) has no image tower "
                          "to export, only an MLP on those features")
    source = model_source(cfg)
    tok_dir = local_copy(store.child(TOKENIZER))
    tok = load_tokenizer(tok_dir)
    model = seeded_model(source, len(tok))  # the seeded initial weights: an adapter's base without pretraining
    ck = from_bytes(store.read_bytes(name), store.display(name), map_location="cpu")
    load_trainable_state(model, ck["model"], ck.get("base_fingerprint"), store.display(name))
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    about = {"run": store.display(), "task": task, "task_name": order[task - 1], "task_order": order,
             "embed_dim": model.embed_dim, "adapter_merged": cfg.model.adapter.kind != "none"}
    if source.complete is not None:
        _write_complete(model, source.complete, tok, out)
        about.update(kind=model.kind, load=f"transformers.{'CLIPModel' if model.kind == 'clip' else 'SiglipModel'}"
                     ".from_pretrained(DIR): get_image_features / get_text_features, then L2-normalise")
    else:
        _write_towers(model, cfg, tok, out)
        about.update(kind="towers", image_pool=cfg.model.image.pool, text_pool=cfg.model.text.pool,
                     load="transformers.AutoModel.from_pretrained(DIR/image) and (DIR/text); embedding = "
                          "L2-normalise(proj(pool(last_hidden_state))), proj from heads.safetensors "
                          "(image_proj.*, text_proj.*), pooled as image_pool / text_pool say")
    (out / "ccr_export.json").write_text(json.dumps(about, indent=1))
    log.info("exported the model after task %d/%d (%s) of %s to %s", task, len(order), order[task - 1],
             store.display(), out)
    return out


def _write_complete(model, info, tok, out: Path) -> None:
    """The transformers model of the folder it came from, with the trained weights; tokenizer and processor."""
    import transformers

    cls = transformers.CLIPModel if model.kind == "clip" else transformers.SiglipModel
    hf = cls.from_pretrained(info.folder, local_files_only=True)
    hf.vision_model.load_state_dict(_merged(model.image_encoder).state_dict())
    hf.text_model.load_state_dict(_merged(model.text_encoder).state_dict())
    if model.kind == "clip":  # SigLIP's heads live inside its towers
        hf.visual_projection.load_state_dict(model.image_proj.state_dict())
        hf.text_projection.load_state_dict(model.text_proj.state_dict())
    with torch.no_grad():
        hf.logit_scale.copy_(model.logit_scale)
        if model.logit_bias is not None:
            hf.logit_bias.copy_(model.logit_bias)
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    for f in ("preprocessor_config.json",):
        if (Path(info.folder) / f).is_file():
            shutil.copyfile(Path(info.folder) / f, out / f)


def _write_towers(model, cfg, tok, out: Path) -> None:
    """Each tower as its own transformers folder (the tokenizer beside the text tower), and the heads."""
    from safetensors.torch import save_file

    _merged(model.image_encoder).save_pretrained(out / "image")
    _merged(model.text_encoder).save_pretrained(out / "text")
    tok.save_pretrained(out / "text")
    heads = {f"image_proj.{k}": v for k, v in model.image_proj.state_dict().items()}
    heads.update({f"text_proj.{k}": v for k, v in model.text_proj.state_dict().items()})
    heads["logit_scale"] = model.logit_scale.detach().reshape(1)
    if model.logit_bias is not None:
        heads["logit_bias"] = model.logit_bias.detach().reshape(1)
    save_file({k: v.detach().contiguous() for k, v in heads.items()}, str(out / "heads.safetensors"))
