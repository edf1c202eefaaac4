"""Ray Train scaling on CPU: one task of the default benchmark with 1 and 2 workers (1 torch thread each).
Efficiency = pairs/s with 2 workers / (2 x pairs/s with 1). Reported, not asserted.

    python bench/train_scaling.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common  # noqa: F401  (path set-up)
import ray

from ccr.distributed.runner import make_study, run_study
from ccr.study.configure import load_config


def main() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp())
    rates = {}
    for w in (1, 2):
        # global batch 64 in both runs: 1 x 64 or 2 x 32
        cfg = load_config(None, ["data.n_tasks=1", "train.epochs=10", "train.threads=1", "resources.use_ray=true",
                                 f"resources.workers={w}", f"train.batch_size={64 // w}", "eval.anatomy=false"])
        res = run_study(make_study(cfg, tmp / f"w{w}", progress=False))
        rates[w] = res["train"][0]["pairs_per_s"]
    print(f"train scaling [default model, global batch 64, CPU, 1 thread per worker]: 1 worker {rates[1]:,.0f} "
          f"pairs/s | 2 workers {rates[2]:,.0f} pairs/s | efficiency {rates[2] / (2 * rates[1]):.2f}")


if __name__ == "__main__":
    main()
