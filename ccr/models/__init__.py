"""The dual encoder: transformers image and text encoders, projections into one L2-normalised space."""

from ccr.models.dual_encoder import DualEncoder, build_model
from ccr.models.tokenizer import TokenizedCaptions, build_tokenizer, tokenize_all

__all__ = ["DualEncoder", "build_model", "build_tokenizer", "tokenize_all", "TokenizedCaptions"]
