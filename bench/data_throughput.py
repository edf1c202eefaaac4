"""Input pipeline throughput, against baselines measured in the same run.

1. Decoding: a Karpathy-format folder of real-size JPEGs (made here), decoded and resized to 224 px.
   ccr's pipeline (ccr.data.pipeline.prefetched over FileImages) against a plain
   `torch.utils.data.DataLoader` + PIL dataset with the same batches and the same number of workers.
2. Training: pairs/s of a study (the embedded default's tiny model, so that decoding is the
   bottleneck) reading those JPEGs, with 0..W loader workers and with the decoded-image cache,
   against the same study on images decoded into memory beforehand.
3. Precomputed features (--precomp N): a 3-task study on N precomputed 2048-d features, timed.

    python bench/data_throughput.py                       # 2000 JPEGs 640x480, workers 0 1 2
    python bench/data_throughput.py --n 4000 --workers 0 1 2 4 --precomp 100000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import preset_config  # noqa: F401  (puts the repository on sys.path)
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ccr.data.dataset import FileImages
from ccr.data.pipeline import prefetched
from ccr.study.configure import load_config
from ccr.study.runner import Study


def make_jpegs(root: Path, n: int, w: int = 640, h: int = 480, tasks: int = 5) -> dict[str, Path]:
    """Photo-like JPEGs (smooth colour fields with texture, quality 90: ~60-120 kB, as COCO's are)."""
    rng = np.random.default_rng(0)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    entries, task_of = [], {}
    for i in range(n):
        low = rng.integers(0, 256, size=(h // 32, w // 32, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 12, size=(h, w, 3), dtype=np.int16)
        fn = f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(img_dir / fn, quality=90)
        split = "test" if (i // tasks) % 10 == 0 else "train"  # a tenth of every task
        entries.append({"filename": fn, "filepath": "", "split": split,
                        "sentences": [{"raw": f"photo {i} of a thing number {k}"} for k in range(5)]})
        task_of[fn] = f"t{i % tasks}"
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    (root / "tasks.json").write_text(json.dumps(task_of))
    return {"path": root / "dataset.json", "images": img_dir, "tasks_file": root / "tasks.json"}


class PlainPIL(Dataset):
    """What one writes without ccr: open, convert, resize the shorter side, centre-crop, to a uint8 tensor."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = self.size / min(w, h)
            im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.Resampling.BICUBIC)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())


def images_per_s(batches, n: int) -> float:
    t = time.perf_counter()
    for _ in batches:
        pass
    return n / (time.perf_counter() - t)


def decode_bench(paths: list[Path], workers: list[int], batch: int, size: int) -> None:
    order = np.random.default_rng(1).permutation(len(paths))
    plan = [order[lo:lo + batch] for lo in range(0, len(order), batch)]
    print(f"\n## decoding {len(paths)} JPEGs to {size} px, batch {batch} (images/s; same batches, same workers)")
    print("| workers | ccr pipeline | plain DataLoader + PIL | ratio |\n| --- | --- | --- | --- |")
    for w in workers:
        plain = DataLoader(PlainPIL(paths, size), batch_sampler=[list(map(int, b)) for b in plan], num_workers=w)
        base = images_per_s(plain, len(paths))
        ours = images_per_s(prefetched(FileImages(paths, size), plan, w), len(paths))
        print(f"| {w} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f} |", flush=True)


def study_bench(kp: dict[str, Path], workers: list[int], tmp: Path, epochs: int) -> None:
    base = ["data.kind=karpathy", f"data.path={kp['path']}", f"data.images={kp['images']}",
            f"data.tasks_file={kp['tasks_file']}", f"data.cache_dir={tmp / 'cache'}",
            f"train.epochs={epochs}", "train.threads=1", "tasks.order=[t0,t1]", "eval.anatomy=false"]

    def pairs_per_s(name: str, *extra: str) -> float:
        cfg = load_config(None, [*base, *extra])
        res = Study(cfg, tmp / name, progress=False, threads=1).run()
        return sum(t["steps"] * cfg.train.batch_size for t in res["train"]) / sum(t["seconds"] for t in res["train"])

    print("\n## training pairs/s of a 2-task study (tiny model, 1 torch thread) reading the JPEGs at 32 px")
    pairs_per_s("warm-up", "data.in_memory=true")  # first-study costs (imports, allocator) out of the figures
    rows = {"decoded into memory beforehand": pairs_per_s("memory", "data.in_memory=true")}
    for w in workers:
        rows[f"JPEG files, {w} loader workers"] = pairs_per_s(f"files{w}", "data.in_memory=false",
                                                               f"data.num_workers={w}")
    t = time.perf_counter()
    cache = pairs_per_s("cache", "data.image_cache=true", f"data.num_workers={max(workers)}")
    rows[f"decoded-image cache (built by this study, {time.perf_counter() - t:.0f} s in all)"] = cache
    rows["decoded-image cache, a second study (built)"] = pairs_per_s("cache2", "data.image_cache=true")
    again = pairs_per_s("memory2", "data.in_memory=true")  # the baseline again: how much the machine drifted
    mem = (rows["decoded into memory beforehand"] + again) / 2
    print("| images from | pairs/s | vs decoded in memory |\n| --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r:,.0f} | {r / mem:.2f} |")
    print(f"(decoded in memory: {rows['decoded into memory beforehand']:,.0f} pairs/s first, {again:,.0f} last; "
          f"ratios against their mean)", flush=True)


def precomp_bench(n: int, tmp: Path, dim: int = 2048) -> None:
    root = tmp / "precomp"
    root.mkdir()
    rng = np.random.default_rng(0)
    tasks = 3
    t0 = time.perf_counter()
    for split, m in (("train", n), ("test", max(300, n // 50))):
        feats = np.lib.format.open_memmap(root / f"{split}_ims.npy", mode="w+", dtype=np.float32, shape=(m, dim))
        for lo in range(0, m, 10000):
            feats[lo:lo + 10000] = rng.standard_normal((min(10000, m - lo), dim), dtype=np.float32)
        feats.flush()
        del feats
        (root / f"{split}_caps.txt").write_text("".join(f"a picture number {i} of kind {i % 97} take {k}\n"
                                                        for i in range(m) for k in range(5)))
        (root / f"{split}.tasks").write_text(json.dumps([f"t{i % tasks}" for i in range(m)]))
    (root / "tasks.json").write_text(json.dumps({s: json.loads((root / f"{s}.tasks").read_text())
                                                 for s in ("train", "test")}))
    made = time.perf_counter() - t0
    cfg = load_config(None, ["data.kind=precomp", f"data.path={root}", f"data.tasks_file={root / 'tasks.json'}",
                             f"data.cache_dir={tmp / 'cache'}", "train.epochs=1", "train.batch_size=128",
                             f"train.threads={os.cpu_count()}", "model.image.layers=1", "model.image.hidden_size=256"])
    t = time.perf_counter()
    res = Study(cfg, tmp / "precomp_out", progress=False).run()
    secs = time.perf_counter() - t
    train = sum(x["seconds"] for x in res["train"])
    print(f"\n## precomputed features: {n:,} train images x {dim} floats ({n * dim * 4 / 1e9:.2f} GB), 5 captions "
          f"each, {tasks} tasks, 1 epoch, {torch.get_num_threads()} torch threads")
    print(f"study: {secs:.0f} s in all ({train:.0f} s training, {secs - train:.0f} s loading, tokenizing, indexing "
          f"and evaluating); t2i R@1 {res['metrics']['t2i/R@1']:.1f} (random features: chance level); "
          f"writing the files took {made:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="JPEGs to make (640x480)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precomp", type=int, default=0, help="also time a study on this many 2048-d features")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# data throughput: torch {torch.__version__}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_decode:
            t = time.perf_counter()
            kp = make_jpegs(tmp / "kp", args.n)
            print(f"made {args.n} JPEGs of 640x480 in {time.perf_counter() - t:.0f} s "
                  f"({sum(p.stat().st_size for p in kp['images'].iterdir()) / args.n / 1e3:.0f} kB each)")
            paths = sorted(kp["images"].iterdir())
            decode_bench(paths, args.workers, args.batch, args.size)
            study_bench(kp, args.workers, tmp, args.epochs)
        if args.precomp:
            precomp_bench(args.precomp, tmp)


if __name__ == "__main__":
    main()
