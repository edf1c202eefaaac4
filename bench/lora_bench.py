"""LoRA against full fine-tuning of the same complete CLIP: training pairs/s, peak memory, trainable
parameters and checkpoint size. Each mode runs in a process of its own (peak RSS on the CPU, peak allocated
memory on a GPU), with the same weights, batch and data.

    python bench/lora_bench.py --threads 2                          # CPU: the tiny CLIP of clip_throughput.py
    python bench/lora_bench.py --preset b16 --batch 128 --steps 20  # GPU: CLIP ViT-B/16, bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from clip_throughput import PRESETS, arguments, save_clip
from common import synthetic_dataset, timed

from ccr.io.checkpoint import to_bytes
from ccr.models import attach_adapter, build_model, resolve_model
from ccr.models.adapters import trainable_state
from ccr.strategies import Strategy, TaskContext
from ccr.study.configure import load_config
from ccr.train import train_task

VOCAB, LENGTH = 1000, 32


def one(args, mode: str) -> dict:
    """One mode (full | lora) in this process."""
    dev, p = torch.device(args.device), PRESETS[args.preset]
    if args.threads:
        torch.set_num_threads(args.threads)
    lora = ["model.adapter.kind=lora", f"model.adapter.r={args.r}", f"model.adapter.alpha={2 * args.r}"]
    cfg = resolve_model(load_config(None, [f"model.pretrained={args.folder}", f"data.image_size={p['image']}",
                                           f"train.batch_size={args.batch}", "train.epochs=1", "train.grad_clip=0",
                                           "train.warmup_steps=1", "train.lr=1e-5",
                                           *(lora if mode == "lora" else [])]))
    ds, tokens = synthetic_dataset({"warm": args.batch * 2, "bench": args.batch * args.steps}, p["image"], LENGTH)
    model = build_model(cfg.model, VOCAB, cfg.train)
    attach_adapter(model, cfg)
    model.to(dev)
    order = ["warm", "bench"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports, data, model: the same for both
    train_task(model, TaskContext(0, order, ds, tokens, cfg, dev), Strategy(), progress=False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    secs = timed(lambda: train_task(model, TaskContext(1, order, ds, tokens, cfg, dev), Strategy(), progress=False),
                 dev)
    # what training adds to the peak: gradients, optimizer state, activations
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"pairs_per_s": args.batch * args.steps / secs, "peak_bytes": peak,
            "trainable": sum(q.numel() for q in model.parameters() if q.requires_grad),
            "params": sum(q.numel() for q in model.parameters()),
            "checkpoint_bytes": len(to_bytes(trainable_state(model)))}


def main() -> None:
    ap = arguments()
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one mode in a child process
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one(args, args.mode)))
        return
    args.folder = tempfile.mkdtemp(prefix="ccr-lora-bench-")
    save_clip(Path(args.folder), PRESETS[args.preset])
    res = {}
    for mode in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--folder", args.folder],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{args.threads or torch.get_num_threads()}"
    print(f"CLIP [{args.preset}, batch {args.batch}, {name}], LoRA r={args.r} on q_proj/v_proj:")
    for mode, r in res.items():
        print(f"  {mode:>4}: {r['pairs_per_s']:,.0f} pairs/s, training peak {r['peak_bytes'] / 2**20:,.1f} MiB, "
              f"trainable {r['trainable']:,} of {r['params']:,} parameters, "
              f"checkpoint {r['checkpoint_bytes'] / 2**20:.2f} MiB")
    f, lo = res["full"], res["lora"]
    ck = lo["checkpoint_bytes"] / f["checkpoint_bytes"]
    print(f"  lora / full: speed {lo['pairs_per_s'] / f['pairs_per_s']:.2f}x, peak memory "
          f"{lo['peak_bytes'] / f['peak_bytes']:.2f}x, checkpoint {ck:.3f}x")


if __name__ == "__main__":
    main()
