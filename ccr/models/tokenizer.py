"""Tokenizers: a word-level one fitted on training captions, or a local pretrained one.

Captions are tokenized once, padded to `max_length`; batches are trimmed to their longest caption
so short-caption datasets do not pay for the maximum length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from ccr.config.schema import TextEncoderConfig


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
# the files a pretrained tokenizer is read from: one of these sets must be whole
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",), ("spiece.model",),
                   ("sentencepiece.bpe.model",), ("tokenizer.model",))
MAX_UNKNOWN = 0.5  # more than this share of the training captions' tokens unknown: the tokenizer is not the model's


def build_tokenizer(cfg: TextEncoderConfig, train_captions: list[str], complete: str | None = None
                    ) -> PreTrainedTokenizerBase:
    """The tokenizer of a complete pretrained model (`complete`: model.pretrained), of a pretrained text
    tower, or a word-level vocabulary trained on the training captions.

    The word-level one is built entirely with the `tokenizers` library: lower-casing, words and single
    punctuation marks as tokens (so "..." is three known "." tokens, not one [UNK]), a `WordLevel` model
    trained by `WordLevelTrainer` (words seen fewer than `min_word_count` times map to [UNK]), and a
    post-processor that frames every caption as `[CLS] words [SEP]`, as BERT's does, so that
    `text.pool=cls` pools a token that exists for that purpose.
    """
    if complete or cfg.pretrained:
        from ccr.models.pretrained import local_folder

        what = "model.pretrained" if complete else "model.text.pretrained"
        return pretrained_tokenizer(local_folder(complete or cfg.pretrained, what), what, train_captions)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(min_frequency=cfg.min_word_count, special_tokens=SPECIALS,
                                        show_progress=False)
    tok.train_from_iterator(train_captions, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=cfg.max_length)


def pretrained_tokenizer(folder: Path, what: str, captions: list[str]) -> PreTrainedTokenizerBase:
    """A pretrained folder's tokenizer, refused (one ConfigError naming the folder) where it is missing or
    cannot encode the dataset: transformers builds a near-empty tokenizer from a folder whose vocabulary
    files were not copied, every caption becomes [BOS, UNK, ...], and a study would train at chance."""
    from ccr.errors import ConfigError, first_line

    if not any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES):
        shown = ", ".join(" + ".join(g) for g in TOKENIZER_FILES)
        raise ConfigError(f"{what}: {folder} has no tokenizer (none of: {shown}); copy the model's tokenizer "
                          "files into the folder")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        ids = tok(captions[:2000], add_special_tokens=False)["input_ids"] if captions else []
    except Exception as e:  # noqa: BLE001 - a damaged or partial tokenizer: one line, whatever transformers raised
        why = first_line(e) or type(e).__name__
        raise ConfigError(f"{what}: the tokenizer in {folder} cannot be read ({why}); is the folder "
                          "complete?") from None
    total = sum(len(x) for x in ids)
    unknown = sum(x.count(tok.unk_token_id) for x in ids) if tok.unk_token_id is not None else 0
    if captions and (total == 0 or unknown > MAX_UNKNOWN * total):
        share = 1.0 if total == 0 else unknown / total
        raise ConfigError(f"{what}: the tokenizer in {folder} cannot encode this dataset: {share:.0%} of the "
                          f"training captions' tokens are unknown ({tok.unk_token}); its vocabulary has {len(tok)} "
                          "tokens. Is the folder complete (its vocabulary files copied)?")
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@dataclass
class TokenizedCaptions:
    """All captions as (M, L) ids and mask; `batch(ids)` trims padding to the batch's longest unless
    `trim` is off (SigLIP reads its padding: it was trained on captions padded to the maximum length).

    Held compact (int32 ids, uint8 mask: 5 bytes a token where int64 takes 16): a study holds every caption's
    tokens, a gallery with a million distractors as many, and the embedding pool ships them; batches come out
    as the int64 the models take."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    trim: bool = True

    def __post_init__(self) -> None:
        self.input_ids = self.input_ids.to(torch.int32)
        self.attention_mask = self.attention_mask.to(torch.uint8)

    def batch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(ids, dtype=torch.long)
        mask = self.attention_mask[idx].long()
        if not self.trim:
            return self.input_ids[idx].long(), mask
        length = max(1, int(mask.sum(1).max()))
        return self.input_ids[idx, :length].long(), mask[:, :length]


def tokenize_all(tok: PreTrainedTokenizerBase, captions: list[str], max_length: int,
                 trim: bool = True, chunk: int = 1 << 16) -> TokenizedCaptions:
    """Every caption padded to `max_length`, tokenized `chunk` captions at a time: the tokenizer's int64 tensors of
    a million captions would double the compact result's memory while they last."""
    ids, masks = [], []
    for lo in range(0, max(len(captions), 1), chunk):
        enc = tok(captions[lo:lo + chunk], padding="max_length", truncation=True, max_length=max_length,
                  return_tensors="pt", return_attention_mask=True)
        ids.append(enc["input_ids"].to(torch.int32))
        masks.append(enc["attention_mask"].to(torch.uint8))
    return TokenizedCaptions(torch.cat(ids), torch.cat(masks), trim)
