"""Tokenizers: a word-level one fitted on training captions, or a local pretrained one.

Captions are tokenized once, padded to `max_length`; batches are trimmed to their longest caption
so short-caption datasets do not pay for the maximum length.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ccr.config import TextEncoderConfig

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
_WORD = re.compile(r"\w+|[^\w\s]")


def build_tokenizer(cfg: TextEncoderConfig, train_captions: list[str]) -> PreTrainedTokenizerBase:
    """A local pretrained tokenizer, or a word-level vocabulary of the training captions."""
    if cfg.pretrained:
        return AutoTokenizer.from_pretrained(cfg.pretrained, local_files_only=True)
    counts = Counter(w for c in train_captions for w in _WORD.findall(c.lower()))
    words = sorted(w for w, n in counts.items() if n >= cfg.min_word_count)
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=cfg.max_length)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@dataclass
class TokenizedCaptions:
    """All captions as (M, L) ids and mask; `batch(ids)` trims padding to the batch's longest."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def batch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(ids, dtype=torch.long)
        mask = self.attention_mask[idx]
        length = max(1, int(mask.sum(1).max()))
        return self.input_ids[idx, :length], mask[:, :length]


def tokenize_all(tok: PreTrainedTokenizerBase, captions: list[str], max_length: int) -> TokenizedCaptions:
    enc = tok(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return TokenizedCaptions(enc["input_ids"], enc["attention_mask"])
