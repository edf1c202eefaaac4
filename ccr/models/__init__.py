"""The dual encoder: transformers image and text encoders, projections into one L2-normalised space."""

from ccr.models.build import ModelSource, attach_adapter, build_for, model_source, pixels_for, resolve_model
from ccr.models.dual_encoder import DualEncoder, build_model
from ccr.models.precision import autocast_for
from ccr.models.tokenizer import TokenizedCaptions, build_tokenizer, load_tokenizer, tokenize_all

__all__ = ["DualEncoder", "ModelSource", "TokenizedCaptions", "attach_adapter", "autocast_for", "build_for",
           "build_model", "build_tokenizer", "load_tokenizer", "model_source", "pixels_for", "resolve_model",
           "tokenize_all"]
