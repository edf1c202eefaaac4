"""A complete CLIP through ccr (model.pretrained) against a plain transformers `CLIPModel` loop, same weights,
same batch, same precision, same data path (uint8 images on the host, normalised on the device): training
pairs/s (ccr's per-task loop vs `model(..., return_loss=True)` + AdamW) and embedding images/s, captions/s
(ccr's Embedder vs `get_image_features` / `get_text_features`). Random weights from a config: the speed of a
ViT-B/16 CLIP does not depend on what it learned.

    python bench/clip_throughput.py --threads 2                           # CPU: a tiny CLIP (the tests' size x2)
    python bench/clip_throughput.py --preset b16 --batch 256 --steps 20   # GPU: CLIP ViT-B/16 at 224 px, bf16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import synthetic_dataset, timed

from ccr.models import build_model, resolve_model
from ccr.models.embed import Embedder
from ccr.models.precision import autocast_for
from ccr.strategies import Strategy, TaskContext
from ccr.study.configure import load_config
from ccr.train import train_task

PRESETS = {  # (vision, text) sizes of CLIPConfig
    "tiny": dict(image=32, patch=8, width=64, layers=2, heads=2, text_width=64, text_layers=2, proj=32),
    "b16": dict(image=224, patch=16, width=768, layers=12, heads=12, text_width=512, text_layers=12, proj=512),
}
VOCAB, LENGTH = 1000, 32


def save_clip(folder: Path, p: dict) -> None:
    """A random CLIP of preset `p` saved as a hub folder (config, weights, preprocessor_config.json)."""
    import transformers as T

    cfg = T.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=p["text_width"], intermediate_size=4 * p["text_width"],
                         num_hidden_layers=p["text_layers"], num_attention_heads=max(1, p["text_width"] // 64),
                         max_position_embeddings=77, eos_token_id=3, bos_token_id=2, pad_token_id=0),
        vision_config=dict(image_size=p["image"], patch_size=p["patch"], hidden_size=p["width"],
                           intermediate_size=4 * p["width"], num_hidden_layers=p["layers"],
                           num_attention_heads=p["heads"]), projection_dim=p["proj"])
    torch.manual_seed(0)
    T.CLIPModel(cfg).save_pretrained(folder)
    T.CLIPImageProcessorPil(size={"shortest_edge": p["image"]},
                            crop_size={"height": p["image"], "width": p["image"]}).save_pretrained(folder)


def plain_train(model, images, ids, steps, batch, device, amp, lr, mean, std) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for s in range(steps):
        sl = slice(s * batch, (s + 1) * batch)
        img = images[sl].to(device, non_blocking=True)
        tid = ids[sl].to(device, non_blocking=True)
        with autocast_for(device, amp):
            pix = (img.float() / 255 - mean) / std
            loss = model(input_ids=tid, pixel_values=pix, attention_mask=torch.ones_like(tid), return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@torch.inference_mode()
def plain_embed(model, images, ids, batch, device, amp, mean, std) -> None:
    model.eval()
    for lo in range(0, len(images), batch):
        with autocast_for(device, amp):
            model.get_image_features(pixel_values=(images[lo:lo + batch].to(device).float() / 255 - mean) / std)
            tid = ids[lo:lo + batch].to(device)
            model.get_text_features(input_ids=tid, attention_mask=torch.ones_like(tid))
    if device.type == "cuda":
        torch.cuda.synchronize()


def arguments() -> argparse.ArgumentParser:
    """The options every CLIP bench takes (this one and lora_bench.py)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=list(PRESETS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    return ap


def main() -> None:
    import transformers as T

    ap = arguments()
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, p = torch.device(args.device), PRESETS[args.preset]
    folder = Path(tempfile.mkdtemp(prefix="ccr-clip-bench-"))
    save_clip(folder, p)
    cfg = resolve_model(load_config(None, [f"model.pretrained={folder}", f"data.image_size={p['image']}",
                                           f"train.batch_size={args.batch}", "train.epochs=1", "train.grad_clip=0",
                                           "train.warmup_steps=1", "train.lr=1e-5"]))
    n_warm, n = args.batch * args.warmup, args.batch * args.steps
    ds, tokens = synthetic_dataset({"warm": n_warm, "bench": n}, p["image"], LENGTH)
    mean = torch.tensor(T.CLIPImageProcessorPil().image_mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(T.CLIPImageProcessorPil().image_std, device=dev).view(1, 3, 1, 1)

    model = build_model(cfg.model, VOCAB, cfg.train).to(dev)
    strategy, order = Strategy(), ["warm", "bench"]
    train_task(model, TaskContext(0, order, ds, tokens, cfg, dev), strategy, progress=False)
    ccr_train = n / timed(lambda: train_task(model, TaskContext(1, order, ds, tokens, cfg, dev), strategy,
                                             progress=False), dev)
    plain = T.CLIPModel.from_pretrained(folder).to(dev)
    images = ds.images.array
    rng = np.random.default_rng(0)
    perm = torch.from_numpy(n_warm + rng.permutation(n))
    plain_train(plain, images[:n_warm], tokens.input_ids[:n_warm], args.warmup, args.batch, dev, cfg.train.amp,
                cfg.train.lr, mean, std)
    raw_train = n / timed(lambda: plain_train(plain, images[perm], tokens.input_ids[perm], args.steps, args.batch, dev,
                                              cfg.train.amp, cfg.train.lr, mean, std), dev)

    # embedding: both sides warmed on the warm-up items first (a GPU loads each kernel at its first launch),
    # then the best of two timings each, alternating
    bench_ids, warm_ids = ds.image_ids("bench", "train"), ds.image_ids("warm", "train")

    def ccr_embed(modality: str, ids) -> None:
        Embedder(model, ds, tokens, dev, args.batch, cfg.train.amp).embed(modality, ids)

    def raw_embed(lo: int, hi: int) -> None:
        plain_embed(plain, images[lo:hi], tokens.input_ids[lo:hi], args.batch, dev, cfg.train.amp, mean, std)

    ccr_embed("images", warm_ids), ccr_embed("captions", warm_ids), raw_embed(0, n_warm)
    ccr_img = ccr_cap = both = 0.0
    for _ in range(2):
        ccr_img = max(ccr_img, n / timed(lambda: ccr_embed("images", bench_ids), dev))
        ccr_cap = max(ccr_cap, n / timed(lambda: ccr_embed("captions", bench_ids), dev))
        both = max(both, n / timed(lambda: raw_embed(n_warm, n_warm + n), dev))
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    amp = cfg.train.amp and dev.type == "cuda"
    print(f"CLIP [{args.preset}, batch {args.batch}, {name}, bf16={amp}]")
    print(f"  train: ccr {ccr_train:,.0f} pairs/s | plain CLIPModel loop {raw_train:,.0f} pairs/s | "
          f"ratio {ccr_train / raw_train:.3f}")
    # the plain loop embeds an image and a caption per item in one pass: compare with ccr's two passes
    ccr_both = 1 / (1 / ccr_img + 1 / ccr_cap)
    print(f"  embed: ccr {ccr_img:,.0f} images/s, {ccr_cap:,.0f} captions/s ({ccr_both:,.0f} pairs/s) | "
          f"plain get_*_features {both:,.0f} pairs/s | ratio {ccr_both / both:.3f}")


if __name__ == "__main__":
    main()
