"""The dual encoder: transformers image and text encoders, projections into one L2-normalised space.

Names are handed on when first used: importing one light module of this package (`ccr.models.precision`, as
the strategies do) must not import transformers, which only building a model needs (2.4 s on 2 cores: config
validation, and so every sweep's start-up, would pay it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccr.models.build import ModelSource, attach_adapter, build_for, model_source, pixels_for, resolve_model
    from ccr.models.dual_encoder import DualEncoder, build_model
    from ccr.models.precision import autocast_for
    from ccr.models.tokenizer import TokenizedCaptions, build_tokenizer, load_tokenizer, tokenize_all

__all__ = ["DualEncoder", "ModelSource", "TokenizedCaptions", "attach_adapter", "autocast_for", "build_for",
           "build_model", "build_tokenizer", "load_tokenizer", "model_source", "pixels_for", "resolve_model",
           "tokenize_all"]


def __getattr__(name: str):
    """The module that defines `name`, imported when the name is first asked for."""
    import importlib

    where = {"ModelSource": "build", "attach_adapter": "build", "build_for": "build", "model_source": "build",
             "pixels_for": "build", "resolve_model": "build", "DualEncoder": "dual_encoder",
             "build_model": "dual_encoder", "autocast_for": "precision", "TokenizedCaptions": "tokenizer",
             "build_tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "tokenize_all": "tokenizer"}
    if name in where:
        return getattr(importlib.import_module(f"ccr.models.{where[name]}"), name)
    raise AttributeError(f"module 'ccr.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
