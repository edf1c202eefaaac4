"""On a GPU: does training from real JPEGs keep up? ViT-B/16 + BERT-base (bf16) trained by ccr's loop on
images read through the decoded-image cache (built here from real-size JPEGs), and on the same JPEGs decoded
by the loader workers at every epoch (no cache), against the same loop on synthetic batches already in
memory. Goal: >= 0.9x.

    python bench/gpu_data_check.py --n 8192 --batch 256 --workers 8     (on a GPU machine; ~5 min)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import preset_config, synthetic_dataset, timed
from data_throughput import make_jpegs

from ccr.data import load_dataset
from ccr.models import build_model, build_tokenizer, tokenize_all
from ccr.strategies import Strategy, TaskContext
from ccr.train import train_task


def rate(model, ds, tokens, cfg, dev, order) -> float:
    strategy = Strategy()
    train_task(model, TaskContext(0, order, ds, tokens, cfg, dev), strategy, progress=False)  # warm-up task
    stats = {}
    secs = timed(lambda: stats.update(train_task(model, TaskContext(1, order, ds, tokens, cfg, dev), strategy,
                                                 progress=False)), dev)
    return stats["steps"] * cfg.train.batch_size / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--preset", default="base", help="tiny: a CPU smoke test of this script")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        kp = make_jpegs(tmp / "kp", args.n, tasks=2)
        print(f"made {args.n} JPEGs in {time.perf_counter() - t:.0f} s")
        common = [f"data.path={kp['path']}", f"data.images={kp['images']}", f"data.tasks_file={kp['tasks_file']}",
                  f"data.cache_dir={tmp / 'cache'}", f"data.num_workers={args.workers}",
                  f"train.batch_size={args.batch}", "train.epochs=1", "train.amp=true"]
        cfg = preset_config(args.preset, "data.kind=karpathy", *common, "data.image_cache=true")
        t = time.perf_counter()
        ds = load_dataset(cfg)
        print(f"validated and cached {ds.n_images} images at {cfg.model.image.image_size} px in "
              f"{time.perf_counter() - t:.0f} s ({type(ds.images).__name__})")
        tok = build_tokenizer(cfg.model.text, ds.captions)
        tokens = tokenize_all(tok, ds.captions, cfg.model.text.max_length)
        torch.manual_seed(0)
        cached = rate(build_model(cfg.model, len(tok), cfg.train).to(dev), ds, tokens, cfg, dev, ["t0", "t1"])
        # no cache: every JPEG decoded and resized in the loader workers at every epoch
        files_cfg = preset_config(args.preset, "data.kind=karpathy", *common, "data.in_memory=false")
        files = load_dataset(files_cfg)
        torch.manual_seed(0)
        decoded = rate(build_model(cfg.model, len(tok), cfg.train).to(dev), files, tokens, files_cfg, dev,
                       ["t0", "t1"])
        n_train = [len(ds.image_ids(t, "train")) for t in ("t0", "t1")]
        syn, syn_tokens = synthetic_dataset({"t0": n_train[0], "t1": n_train[1]}, cfg.model.image.image_size,
                                            cfg.model.text.max_length)
        torch.manual_seed(0)
        memory = rate(build_model(cfg.model, 1000, cfg.train).to(dev), syn, syn_tokens, cfg, dev, ["t0", "t1"])
    where = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"train [{args.preset}, bf16 autocast on a GPU, batch {args.batch}, {where}]: "
          f"from JPEGs via the cache {cached:,.0f} pairs/s | synthetic in memory {memory:,.0f} pairs/s | "
          f"ratio {cached / memory:.3f}")
    print(f"train [{args.preset}, batch {args.batch}, {args.workers} loader workers, {where}]: JPEGs decoded every "
          f"epoch {decoded:,.0f} pairs/s | ratio to synthetic in memory {decoded / memory:.3f}")


if __name__ == "__main__":
    main()
