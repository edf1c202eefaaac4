"""Each strategy's study time against finetune's, as a sweep runs them: the `relative_work` a sweep orders its
trials by (ccr.strategies.base.Strategy.relative_work; longest first).

    python bench/strategy_work.py                          # every built-in strategy on the embedded default
    python bench/strategy_work.py --set train.epochs=2 --strategies finetune lwf

One `ccr sweep` of one trial per strategy on a local Ray, 1 CPU (and 1 torch thread) per trial, as many at once
as there are cores; each trial's `study_seconds` (trial.json) against finetune's, next to the value the
strategy declares (joint's work is derived from the task count: task t trains on t tasks' pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from ccr.strategies import REGISTRY
    from ccr.study.configure import load_config

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--set", action="append", default=[], help="config overrides for every study")
    p.add_argument("--strategies", nargs="+", default=sorted(REGISTRY))
    a = p.parse_args()
    names = ["finetune", *[s for s in a.strategies if s != "finetune"]]
    tmp = Path(tempfile.mkdtemp(prefix="ccr-work-bench-"))
    sets = [x for s in [*a.set, f"data.cache_dir={tmp / 'cache'}"] for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CCR_SCRATCH": str(tmp / "scratch"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    spec = tmp / "work.yaml"
    spec.write_text(yaml.safe_dump({"grid": {"strategy.name": names}, "resources": {"cpus_per_trial": 1}}))
    subprocess.run([sys.executable, "-m", "ccr.cli", "sweep", str(spec), "--out", str(tmp / "sweep"), *sets],
                   env=env, capture_output=True)  # a strategy this config cannot run is reported below
    seconds = {}
    for f in (tmp / "sweep" / "runs").glob("*/trial.json"):
        tr = json.loads(f.read_text())
        seconds[json.loads((f.parent / "results.json").read_text())["strategy"]] = tr["timing"]["study_seconds"]
    cfg = load_config(None, a.set)
    n = cfg.data.n_tasks
    print(f"strategy work [{len(names)} studies, 1 thread each, {os.cpu_count()} cores, overrides {a.set or 'none'}]")
    print(f"  {'strategy':10s} {'study s':>8s} {'/ finetune':>10s} {'declared':>9s}")
    failed = json.loads((tmp / "sweep" / "sweep_status.json").read_text()).get("failed", {})
    for s in names:
        if s not in seconds:
            why = failed.get(f"strategy.name={s}", "no result").strip().splitlines()[-1][-160:]
            print(f"  {s:10s} not run with this config: {why}")
            continue
        declared = REGISTRY[s].work(n) / n
        print(f"  {s:10s} {seconds[s]:8.1f} {seconds[s] / seconds['finetune']:10.2f} {declared:9.2f}")


if __name__ == "__main__":
    main()
