"""sweeps/tuned/chosen.yaml from the runs of `ccr sweep sweeps/tuned/<method>.yaml` (ewc, lwf, replay, compat;
wiseft, zscl and lora, tuned in the pretrained regimes only): the hyperparameters each Optuna search chose
per regime on the val split, with the val score. Methods whose runs are not under the folder are left out.

    python analysis/chosen_values.py [runs/sweeps] > sweeps/tuned/chosen.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from findings_tables import REGIMES  # this folder's sibling script: run as a script


def main(root: str = "runs/sweeps") -> None:
    chosen: dict[str, dict[str, dict]] = {}
    for strategy in ("ewc", "lwf", "replay", "compat", "wiseft", "zscl", "lora"):
        path = Path(root) / f"tuned-{strategy}" / "best.json"
        if not path.is_file():
            continue
        best = json.loads(path.read_text())
        fixed = (yaml.safe_load((path.parent / "sweep.yaml").read_text()) or {}).get("set", {})
        for cell in best.values():
            cfg = {**fixed, **cell["config"]}  # what the sweep set for all its trials, and the trial's own
            regime = REGIMES[(tuple(cfg["tasks.pretrain"]), cfg["model.freeze"])]
            params = {k.rsplit(".", 1)[1]: round(v, 4) if isinstance(v, float) else v
                      for k, v in cfg.items() if k.startswith(("strategy.params.", "model.adapter.alpha"))}
            chosen.setdefault(regime, {})[strategy] = {**params, "val/t2i/R@1": round(cell["val/t2i/R@1"], 2)}
    print("# Chosen on the val split by `ccr sweep sweeps/tuned/<strategy>.yaml` (6 Optuna trials per regime,")
    print("# seed 0, forward task order; wiseft, zscl and lora in the pretrained regimes only); printed by")
    print("# `python analysis/chosen_values.py runs/sweeps`.")
    print("# Use: ccr run --set strategy.name=ewc --set strategy.params.ewc.lam=<value> ...")
    print(yaml.safe_dump(chosen, sort_keys=False, allow_unicode=True), end="")


if __name__ == "__main__":
    main(*sys.argv[1:])
