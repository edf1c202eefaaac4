"""Training throughput (pairs/s): ccr's per-task loop against a minimal raw-torch loop, same model,
same batch, same data path (uint8 images indexed on the host, moved to the device per step).

    python bench/train_throughput.py                      # CPU, the default model
    python bench/train_throughput.py --preset base --device cuda --batch 256 --steps 30
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import preset_config, synthetic_dataset, timed

from ccr.models import build_model, losses
from ccr.strategies import Strategy, TaskContext
from ccr.train import autocast_for, train_task


def raw_loop(model, ds, tokens, ids_per_step, device, amp, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for idx in ids_per_step:
        t = torch.as_tensor(idx)
        img = ds.images.array[t].to(device, non_blocking=True)
        tid, mask = tokens.input_ids[t].to(device, non_blocking=True), tokens.attention_mask[t].to(device)
        with autocast_for(device, amp):
            i, c = model(img, tid, mask)
            loss = losses.infonce(i.float(), c.float(), model.logit_scale)["contrastive_loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = preset_config(args.preset, f"train.batch_size={args.batch}", "train.epochs=1", "train.grad_clip=0",
                        "train.warmup_steps=1")
    size, length = cfg.model.image.image_size, cfg.model.text.max_length
    ds, tokens = synthetic_dataset({"warm": args.batch * args.warmup, "bench": args.batch * args.steps}, size, length)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1000, cfg.train).to(dev)
    strategy = Strategy()
    for i in (0,):  # warm-up task (kernels, allocator)
        train_task(model, TaskContext(i, ["warm", "bench"], ds, tokens, cfg, dev), strategy, progress=False)
    stats = {}
    secs = timed(lambda: stats.update(train_task(model, TaskContext(1, ["warm", "bench"], ds, tokens, cfg, dev),
                                                 strategy, progress=False)), dev)
    ccr_rate = args.batch * args.steps / secs

    torch.manual_seed(0)
    raw = build_model(cfg.model, 1000, cfg.train).to(dev)
    rng = np.random.default_rng(0)
    warm_ids = np.arange(args.batch * args.warmup)
    bench_ids = warm_ids.size + rng.permutation(args.batch * args.steps)
    raw_loop(raw, ds, tokens, np.split(warm_ids, args.warmup), dev, cfg.train.amp, cfg.train.lr)
    secs_raw = timed(lambda: raw_loop(raw, ds, tokens, np.split(bench_ids, args.steps), dev, cfg.train.amp,
                                      cfg.train.lr), dev)
    raw_rate = args.batch * args.steps / secs_raw
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"train [{args.preset}, batch {args.batch}, {args.steps} steps, {name}, amp={cfg.train.amp}]: "
          f"ccr {ccr_rate:,.0f} pairs/s | raw torch {raw_rate:,.0f} pairs/s | ratio {ccr_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
