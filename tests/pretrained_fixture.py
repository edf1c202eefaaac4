"""Tiny complete CLIP and SigLIP folders, laid out exactly as a hub folder is: `save_pretrained` of a small
random model (config.json + model.safetensors), a tokenizer trained with the `tokenizers` library and saved
as `PreTrainedTokenizerFast` (tokenizer.json, tokenizer_config.json, special_tokens_map), and an image
processor's `preprocessor_config.json`. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

CAPTION_WORDS = ("a photo of the dog cat car bus number small large red blue green in top left right bottom "
                 "center circle square triangle cross bar diamond ring frame wedge plus pillar rhombus")


def _tokenizer(kind: str, corpus: list[str]):
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"] if kind == "clip" else ["<pad>", "<unk>", "</s>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, show_progress=False))
    if kind == "clip":  # CLIP frames a caption by start and end of text, and pools the end-of-text token
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[(t, tok.token_to_id(t)) for t in ("<|startoftext|>", "<|endoftext|>")])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                       bos_token="<|startoftext|>", eos_token="<|endoftext|>", model_max_length=16)
    # SigLIP appends an end-of-sequence token, pads to the maximum length and takes no attention mask
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=16, model_input_names=["input_ids"])


def make_complete(folder: Path, kind: str = "clip", image_size: int = 16, seed: int = 0,
                  corpus: list[str] | None = None, resample: int | None = None) -> Path:
    """A tiny random `kind` ('clip' or 'siglip') dual encoder saved as a hub folder; returns `folder`."""
    import transformers as T

    corpus = corpus or [CAPTION_WORDS]
    tok = _tokenizer(kind, corpus)
    vocab = len(tok)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(seed)
    if kind == "clip":
        cfg = T.CLIPConfig(
            text_config=dict(vocab_size=vocab, max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **common),
            vision_config=dict(image_size=image_size, patch_size=4, **common), projection_dim=16)
        model = T.CLIPModel(cfg)
        proc = T.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                       crop_size={"height": image_size, "width": image_size},
                                       **({"resample": resample} if resample is not None else {}))
    else:
        cfg = T.SiglipConfig(
            text_config=dict(vocab_size=vocab, max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                             bos_token_id=None, eos_token_id=tok.eos_token_id, **common),
            vision_config=dict(image_size=image_size, patch_size=4, **common))
        model = T.SiglipModel(cfg)
        proc = T.SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                         resample=2 if resample is None else resample)  # bilinear, as google's
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def make_vit_with_pooler(folder: Path, image_size: int = 16) -> Path:
    """A ViT tower saved with its pooler (as google/vit-* are): parameters no ccr loss reaches."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    ViTModel(ViTConfig(image_size=image_size, patch_size=4, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64), add_pooling_layer=True).save_pretrained(folder)
    return folder
