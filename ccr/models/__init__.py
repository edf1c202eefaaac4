"""The dual encoder: transformers image and text encoders, projections into one L2-normalised space."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ccr.errors import ConfigError
from ccr.models.dual_encoder import DualEncoder, build_model
from ccr.models.tokenizer import TokenizedCaptions, build_tokenizer, load_tokenizer, tokenize_all

if TYPE_CHECKING:
    from ccr.config import Config
    from ccr.data.dataset import RetrievalDataset

__all__ = ["DualEncoder", "build_model", "build_tokenizer", "tokenize_all", "TokenizedCaptions", "build_for",
           "resolve_model", "text_length", "attach_adapter"]


def text_length(cfg: Config) -> tuple[int, bool]:
    """(tokens per caption, whether batches may trim padding): a complete pretrained model's own length (CLIP
    77, SigLIP 64) and padding (SigLIP reads its padding, so no trimming), else model.text.max_length."""
    if cfg.model.pretrained:
        from ccr.pretrained import describe

        info = describe(cfg.model.pretrained)
        return info.max_length, info.model_type != "siglip"
    return cfg.model.text.max_length, True


def _vision_size(spec: str) -> int | None:
    from ccr.pretrained import folder_config, local_folder

    what = "model.image.pretrained"
    cfg = folder_config(local_folder(spec, what), what)
    size = (cfg.get("vision_config") or cfg).get("image_size")
    return int(size) if size else None


def resolve_model(cfg: Config) -> Config:
    """The config with what the pretrained weights decide filled in (a complete model's embed_dim), checked
    before anything is built: a conflicting embed_dim, and image sizes that disagree (the generated data's
    data.image_size, model.image.image_size, a checkpoint's image size) are one ConfigError each."""
    m, d = cfg.model, cfg.data
    if m.pretrained:
        from ccr.pretrained import describe

        info = describe(m.pretrained)
        if m.embed_dim is not None and m.embed_dim != info.embed_dim:
            raise ConfigError(f"config key 'model.embed_dim': {m.embed_dim}, but {m.pretrained} embeds in "
                              f"{info.embed_dim} dimensions (leave model.embed_dim unset)")
        if d.kind == "generated" and d.image_size != info.image_size:
            raise ConfigError(f"config key 'data.image_size': the generated images are {d.image_size} px, but "
                              f"{m.pretrained} takes {info.image_size} px images: set data.image_size="
                              f"{info.image_size}")
        return dataclasses.replace(cfg, model=dataclasses.replace(m, embed_dim=info.embed_dim))
    if d.kind == "precomp":
        return cfg
    size = m.image.image_size
    if m.image.pretrained:
        have = _vision_size(m.image.pretrained)
        if have is not None and have != size:
            raise ConfigError(f"config key 'model.image.image_size': {size}, but the image tower "
                              f"{m.image.pretrained} takes {have} px images: set model.image.image_size={have}")
    if d.kind == "generated" and d.image_size != size:
        raise ConfigError(f"config keys 'data.image_size' ({d.image_size}) and 'model.image.image_size' ({size}) "
                          "differ: the generated images must be the size the image encoder takes")
    return cfg


def build_for(cfg: Config, ds: RetrievalDataset, tokenizer: str | Path, device: torch.device | str = "cpu",
              adapter: bool = True) -> tuple[DualEncoder, object, TokenizedCaptions]:
    """(model, tokenizer, every caption tokenized) for a study: the one way the driver, Ray Train workers and
    shard actors build them, so they all hold the same model (seeded initialisation, or pretrained weights,
    with model.adapter's adapters attached unless `adapter` is False: a study attaches them itself after
    its pretraining stage, whose model is their base)."""
    tok = load_tokenizer(tokenizer)
    length, trim = text_length(cfg)
    tokens = tokenize_all(tok, ds.captions, length, trim)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(tok), cfg.train, getattr(ds.images, "feature_dim", None))
    if adapter:
        attach_adapter(model, cfg)
    return model.to(device), tok, tokens


def attach_adapter(model: DualEncoder, cfg: Config) -> None:
    """model.adapter's adapters, initialised from a seed of their own (the same in every process)."""
    from ccr.context import task_seed
    from ccr.models.adapters import attach

    attach(model, cfg.model.adapter, task_seed(cfg.seed, 0, 77))
