"""Gallery embedding throughput: ccr's Embedder against a raw torch inference loop, same model and batch.

    python bench/embed_throughput.py
    python bench/embed_throughput.py --preset base --device cuda --batch 256 --n 20480
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import preset_config, synthetic_dataset, timed

from ccr.models import build_model
from ccr.models.embed import Embedder
from ccr.train import autocast_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = preset_config(args.preset)
    ds, tokens = synthetic_dataset({"g": args.n}, cfg.model.image.image_size, cfg.model.text.max_length)
    model = build_model(cfg.model, 1000, cfg.train).to(dev).eval()
    ids = np.arange(args.n)
    warm = ids[: args.batch * 2]
    Embedder(model, ds, tokens, dev, args.batch, cfg.train.amp).embed("images", warm)
    Embedder(model, ds, tokens, dev, args.batch, cfg.train.amp).embed("captions", warm)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    for modality in ("images", "captions"):
        emb = Embedder(model, ds, tokens, dev, args.batch, cfg.train.amp)
        t_ccr = timed(lambda modality=modality, emb=emb: emb.embed(modality, ids), dev)

        @torch.inference_mode()
        def raw(modality=modality):
            outs = []
            for lo in range(0, args.n, args.batch):
                t = torch.arange(lo, min(lo + args.batch, args.n))
                with autocast_for(dev, cfg.train.amp):
                    if modality == "images":
                        e = model.encode_images(ds.images.array[t].to(dev, non_blocking=True))
                    else:
                        e = model.encode_text(tokens.input_ids[t].to(dev), tokens.attention_mask[t].to(dev))
                outs.append(e.float().cpu())
            return torch.cat(outs)

        raw()
        t_raw = timed(raw, dev)
        print(f"embed {modality} [{args.preset}, batch {args.batch}, n {args.n}, {name}]: ccr {args.n / t_ccr:,.0f}/s"
              f" | raw torch {args.n / t_raw:,.0f}/s | ratio {t_raw / t_ccr:.3f}")


if __name__ == "__main__":
    main()
