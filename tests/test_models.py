"""The word-level tokenizer (built with the `tokenizers` library) and what the text encoder pools."""

import torch

from ccr.config.schema import ModelConfig, TextEncoderConfig
from ccr.models import build_model, build_tokenizer, tokenize_all
from ccr.models.tokenizer import load_tokenizer

CAPS = ["A red circle...", "a blue square", "two red circles, small", "a blue square", "Red!"]


def test_captions_are_framed_by_cls_and_sep_and_punctuation_is_known(tmp_path):
    tok = build_tokenizer(TextEncoderConfig(), CAPS)
    tok.save_pretrained(str(tmp_path))
    for t in (tok, load_tokenizer(tmp_path)):  # as built, and as every later run loads it from the study
        words = t.convert_ids_to_tokens(t("A red circle... Red!")["input_ids"])
        assert words == ["[CLS]", "a", "red", "circle", ".", ".", ".", "red", "!", "[SEP]"]
        assert "[UNK]" not in words  # "..." and "!" were [UNK] with the old regex/pre-tokenizer mismatch
        assert t.convert_ids_to_tokens(t("a purple circle")["input_ids"])[2] == "[UNK]"  # unseen word


def test_min_word_count_and_same_vocabulary_every_time():
    rare = build_tokenizer(TextEncoderConfig(min_word_count=2), CAPS)
    vocab = rare.get_vocab()
    assert {"a", "red", "blue", "square", "."} <= set(vocab) and "two" not in vocab and "small" not in vocab
    assert [vocab[s] for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    assert build_tokenizer(TextEncoderConfig(min_word_count=2), list(reversed(CAPS))).get_vocab() == vocab


def test_truncation_keeps_the_frame_and_padding_is_masked():
    tok = build_tokenizer(TextEncoderConfig(), CAPS)
    enc = tokenize_all(tok, ["two red circles, small , a blue square"], max_length=6)
    ids = tok.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert ids[0] == "[CLS]" and ids[-1] == "[SEP]" and len(ids) == 6
    short = tokenize_all(tok, ["red"], max_length=6)
    assert short.attention_mask[0].tolist() == [1, 1, 1, 0, 0, 0]


def test_captions_are_held_compact_and_batches_are_the_tokenizers_own():
    """int32 ids and a uint8 mask (5 bytes a token, not 16), tokenized a chunk at a time: batches equal the
    tokenizer's own int64 output for all captions at once, trimmed to the longest or not."""
    tok = build_tokenizer(TextEncoderConfig(), CAPS)
    ref = tok(CAPS, padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    for trim in (True, False):
        enc = tokenize_all(tok, CAPS, 8, trim, chunk=2)
        assert enc.input_ids.dtype == torch.int32 and enc.attention_mask.dtype == torch.uint8
        ids, mask = enc.batch([4, 0, 2])
        n = int(ref["attention_mask"][[4, 0, 2]].sum(1).max()) if trim else 8  # the batch's longest
        assert ids.dtype == mask.dtype == torch.int64
        rows = [4, 0, 2]
        assert torch.equal(ids, ref["input_ids"][rows, :n]) and torch.equal(mask, ref["attention_mask"][rows, :n])


def test_cls_pooling_reads_the_cls_token():
    """text.pool=cls is the encoder's output at position 0, which is now [CLS] (it was the first word)."""
    tok = build_tokenizer(TextEncoderConfig(pool="cls"), CAPS)
    cfg = ModelConfig(text=TextEncoderConfig(pool="cls"))
    torch.manual_seed(0)
    model = build_model(cfg, len(tok)).eval()
    enc = tokenize_all(tok, ["a red circle", "a blue square"], 8)
    assert (enc.input_ids[:, 0] == tok.cls_token_id).all()
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        direct = torch.nn.functional.normalize(model.text_proj(hidden[:, 0]), dim=-1)
        pooled = model.encode_text(enc.input_ids, enc.attention_mask)
    assert torch.allclose(pooled, direct, atol=1e-6)


def test_pixel_normalisation_is_exactly_mean_and_std_times_255():
    """(x - 255·mean) / (255·std): multiplied by 255.0, not divided by 1/255 (127.49999 for 0.5 in float32,
    which moved every number of the embedded default in its last bits)."""
    from ccr.study.configure import load_config

    model = build_model(load_config(None, []).model, 50)
    assert model.pixel_mean.flatten().tolist() == [127.5] * 3 and model.pixel_std.flatten().tolist() == [127.5] * 3
