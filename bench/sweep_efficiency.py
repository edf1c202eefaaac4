"""A sweep against the same studies run one after another, in the same benchmark run.

    python bench/sweep_efficiency.py                       # 4 studies of the embedded default
    python bench/sweep_efficiency.py --trials 2 --set train.epochs=2

Sequential: each study is its own `ccr run` process using every core (torch's default threads).
Sweep: one `ccr sweep` of the same studies on a local Ray, one CPU (and one torch thread) per trial,
as many trials at once as there are cores. Reports sweep wall time / sequential wall time and, from
the timing each trial records in `trial.json`: each trial's time outside the study itself (writing
results, log and trial record to storage), the time from a slot freeing to the next trial's function
running (Ray's per-trial start: the finished trial's actor going, the next one's starting and
importing), the sweep's start-up (Ray and Tune up to the first trial), and all slot time not spent
inside a study (start-up, trial starts, idle slots at the end), per trial.
Goal on 2 cores: ratio <= 1, per-trial overhead < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STRATEGIES = ["finetune", "lwf", "ewc", "replay", "compat", "joint"]


def _sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="config overrides for every study")
    a = p.parse_args()
    strategies = STRATEGIES[: a.trials]
    tmp = Path(tempfile.mkdtemp(prefix="ccr-sweep-bench-"))
    common = [*a.set, f"data.cache_dir={tmp / 'cache'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CCR_SCRATCH": str(tmp / "scratch"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the local Ray on 127.0.0.1
    ccr = [sys.executable, "-m", "ccr.cli"]
    # the dataset cache is built once before timing, so neither side pays for it
    subprocess.run([*ccr, "run", "--quiet", "--out", str(tmp / "warm"), *_sets([*common, "data.n_tasks=1",
                    "train.epochs=1"])], env=env, check=True, capture_output=True)

    seq = []
    for s in strategies:
        t = time.perf_counter()
        subprocess.run([*ccr, "run", "--quiet", "--out", str(tmp / "seq" / s), *_sets([*common, f"strategy.name={s}"])],
                       env=env, check=True, capture_output=True)
        seq.append(time.perf_counter() - t)

    spec = tmp / "bench.yaml"
    spec.write_text(yaml.safe_dump({"grid": {"strategy.name": strategies}, "resources": {"cpus_per_trial": 1}}))
    t = time.perf_counter()
    t_start = time.time()
    subprocess.run([*ccr, "sweep", str(spec), "--out", str(tmp / "sweep"), *_sets(common)], env=env, check=True,
                   capture_output=True)
    sweep_wall = time.perf_counter() - t
    trials = [json.loads(p.read_text()) for p in (tmp / "sweep" / "runs").glob("*/trial.json")]
    timing = [tr["timing"] for tr in trials]
    overhead = [tm["done"] - tm["entered"] - tm["study_seconds"] for tm in timing]
    # Ray's per-trial cost: from a slot freeing (a trial done) to the next trial's function running
    slots = min(os.cpu_count() or 1, len(strategies))
    later, dones = sorted(tm["entered"] for tm in timing)[slots:], sorted(tm["done"] for tm in timing)
    gaps = [e - d for e, d in zip(later, dones, strict=False)]
    startup = min(tm["entered"] for tm in timing) - t_start
    study = [tm["study_seconds"] for tm in timing]
    cores = os.cpu_count()
    idle = (sweep_wall * slots - sum(study)) / len(strategies)  # slot time not spent inside a study
    print(f"sweep efficiency [{len(strategies)} studies ({', '.join(strategies)}), {cores} cores, "
          f"overrides {a.set or 'none'}]")
    print(f"  sequential `ccr run` x{len(strategies)} (all cores each): {sum(seq):.1f} s "
          f"(per study {', '.join(f'{x:.1f}' for x in seq)})")
    print(f"  one `ccr sweep` (1 CPU per trial, {cores} at once): {sweep_wall:.1f} s; "
          f"sweep / sequential = {sweep_wall / sum(seq):.2f}")
    print(f"  per trial: study {sum(study) / len(study):.1f} s (data loading included, as in `ccr run`); "
          f"from a slot freeing to the next trial running (Ray's trial start) "
          f"{sum(gaps) / max(len(gaps), 1):.2f} s (over {len(gaps)} trials); writing results, log and trial "
          f"record {sum(overhead) / len(overhead):.2f} s (max {max(overhead):.2f})")
    print(f"  sweep start-up (Ray + Tune) to the first trial {startup:.1f} s, once; all slot time not spent in a "
          f"study (start-up, trial processes, idle slots at the end): {idle:.1f} s per trial")


if __name__ == "__main__":
    main()
