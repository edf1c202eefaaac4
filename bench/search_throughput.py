"""Exact top-k search throughput (queries/s): ccr's FlatIndex against raw faiss IndexFlatIP (CPU) or a raw
torch matmul+topk (GPU), over the same random unit vectors, in one run.

    python bench/search_throughput.py --n 100000 1000000 --d 256
    python bench/search_throughput.py --backend torch --device cuda --n 1000000 --d 512 --dtype float16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import best_of, unit

from ccr.index.search import FlatIndex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backend", default="faiss", choices=["faiss", "torch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (both sides; not exact)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    rng = np.random.default_rng(0)
    q = unit(rng, args.nq, args.d)
    for n in args.n:
        ids = np.arange(n)
        if args.backend == "faiss":
            g = unit(rng, n, args.d)
            import faiss

            raw = faiss.IndexFlatIP(args.d)
            raw.add(g)
            t_raw = best_of(lambda raw=raw: raw.search(q, args.k))
            ours = FlatIndex(g, ids, "faiss")
            label = f"faiss x{faiss.omp_get_max_threads()} threads"
        else:
            dev = torch.device(args.device)
            dt = getattr(torch, args.dtype)
            gen = torch.Generator(device=dev).manual_seed(0)
            gm = torch.randn(n, args.d, device=dev, generator=gen)  # made on the device: 10M rows in seconds
            gm = (gm / gm.norm(dim=1, keepdim=True)).to(dt)
            chunk = max(1, FlatIndex.CHUNK_BYTES // (n * gm.element_size()))

            def raw_search(gm=gm, chunk=chunk, dev=dev, dt=dt):
                qt = torch.from_numpy(q).to(dev).to(dt)
                out = []
                with torch.inference_mode():
                    for lo in range(0, len(qt), chunk):
                        s, p = (qt[lo:lo + chunk] @ gm.T).topk(args.k, dim=1)
                        out.append((s.float().cpu(), p.cpu()))
                return out

            raw_search()
            t_raw = best_of(raw_search)
            ours = FlatIndex(gm, ids, "torch", args.device, args.dtype)
            label = torch.cuda.get_device_name() if dev.type == "cuda" else f"torch cpu x{torch.get_num_threads()}"
        ours.search(q[:10], args.k)
        t_ours = best_of(lambda ours=ours: ours.search(q, args.k))
        tf = " tf32" if args.tf32 and args.dtype == "float32" else ""
        print(f"search n={n:,} d={args.d} nq={args.nq} k={args.k} [{args.backend} {args.dtype}{tf}, {label}]: "
              f"ccr {args.nq / t_ours:,.0f} q/s | raw {args.nq / t_raw:,.0f} q/s | ratio {t_raw / t_ours:.3f}")


if __name__ == "__main__":
    main()
