"""Does `ccr calibrate` predict a re-index it did not time? Calibrate, then re-index a gallery of N images (and
the dataset's captions per image) and time it; print the prediction next to the measurement.

    python bench/calibration_check.py --images 100000                      # the embedded default, 2 threads
    python bench/calibration_check.py --images 100000 --set index.approx=ivfpq --set index.pq_m=8

The re-index is what a study's `reindex` policy does to a gallery of that size: every image and caption embedded
by the study's `Embedder` at the evaluation batch size (the dataset's items again and again: the generated
benchmark holds a few thousand), in passes of one gallery part of 50,000 items, then every vector added to
the configured index (its approximate part trained once on 20,000 of them, as a gallery trains it). The
prediction is the calibration's: images / images_per_second + captions / captions_per_second + vectors x
index seconds per vector + one training per gallery. Goal: within 15 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=100_000, help="gallery images to re-index")
    p.add_argument("--seconds", type=float, default=10.0, help="calibration seconds per modality")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()

    import numpy as np

    from ccr.index.search import ApproxIndex, FlatIndex, train_template
    from ccr.study.calibrate import SAMPLE, calibrate, study_embedder
    from ccr.study.configure import load_config

    cfg = load_config(None, [f"train.threads={a.threads}", *a.set])
    rec = calibrate(cfg, a.seconds, index_vectors=200_000)
    # the same model and data as the calibration built, embedding a gallery it never saw whole
    c, ds, emb = study_embedder(cfg)
    per_image = len(ds.captions) / ds.n_images
    n_img, n_cap = a.images, round(a.images * per_image)
    part = 50_000
    measured = {}
    vectors = {}
    for m, n, pool in (("images", n_img, ds.n_images), ("captions", n_cap, len(ds.captions))):
        t0 = time.perf_counter()
        out = []
        for lo in range(0, n, part):
            ids = np.arange(lo, min(n, lo + part)) % pool
            out.append(emb.run(m, ids))
        measured[m] = time.perf_counter() - t0
        vectors[m] = np.concatenate(out)
    t0 = time.perf_counter()
    trainings = 0
    for x in vectors.values():
        ids = np.arange(len(x))
        if c.index.approx == "none":
            FlatIndex(x, ids, c.index.backend)
        else:
            template, _ = train_template(c.index, x[:SAMPLE])
            trainings += 1
            ApproxIndex(x, ids, template, c.index.nprobe)
    measured["index"] = time.perf_counter() - t0
    idx = rec["index"]
    predicted = {"images": n_img / rec["images_per_second"], "captions": n_cap / rec["captions_per_second"],
                 "index": (n_img + n_cap) * idx["add_seconds_per_million"] / 1e6 + trainings * idx["train_seconds"]}
    print(f"\n{rec['device_name']}, {rec['threads']} threads, eval batch {rec['eval_batch_size']}; re-index of "
          f"{n_img:,} images and {n_cap:,} captions ({idx['kind']} index)")
    print(f"{'part':10s} {'predicted s':>12s} {'measured s':>11s} {'measured/predicted':>19s}")
    for k in ("images", "captions", "index"):
        print(f"{k:10s} {predicted[k]:12.1f} {measured[k]:11.1f} {measured[k] / max(predicted[k], 1e-9):19.3f}")
    tp, tm = sum(predicted.values()), sum(measured.values())
    print(f"{'total':10s} {tp:12.1f} {tm:11.1f} {tm / tp:19.3f}   (goal: within 15 %: 0.85 to 1.15)")


if __name__ == "__main__":
    main()
