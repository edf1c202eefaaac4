"""The tables of docs/findings.md, from the runs of `ccr sweep sweeps/regimes.yaml` (tuned strategies) or
`ccr sweep sweeps/regimes_defaults.yaml` (default hyperparameters).

    python experiments/findings_tables.py [runs/sweeps/regimes]

Per regime (tasks.pretrain x model.freeze) and strategy: the paired effect of no_reindex against
reindex with its 95 % interval; the final recall and forgetting under reindex; and the anatomy of the
old tasks after the last task (drift per modality, alignment, the compatibility grid).
"""

from __future__ import annotations

import json
import sys

import pandas as pd

from analysis.effects import paired_effects
from analysis.load import collect, per_run_summary, tidy

REGIMES = {("[]", "none"): "from scratch", ('["pool"]', "none"): "pretrained",
           ('["pool"]', "backbone"): "pretrained, frozen backbone", ("[]", "backbone"): "random features (frozen)"}
STRATEGIES = ["finetune", "ewc", "lwf", "replay", "compat", "joint"]


# sweeps/regimes.yaml names its cases (tags.regime); sweeps/regimes_defaults.yaml sets the keys directly
TAGS = {"scratch": "from scratch", "pretrained": "pretrained", "pretrained_frozen": "pretrained, frozen backbone",
        "random_frozen": "random features (frozen)"}


def regime(row: pd.Series) -> str:
    tag = row.get("cfg.tags.regime")
    if isinstance(tag, str):
        return TAGS.get(tag, tag)
    pre = row.get("cfg.tasks.pretrain", "[]")
    pre = json.dumps(json.loads(pre)) if isinstance(pre, str) else json.dumps(list(pre or []))
    return REGIMES.get((pre, row.get("cfg.model.freeze", "none")), f"{pre}/{row.get('cfg.model.freeze')}")


def _ci(r: pd.Series, col: str) -> str:
    mean, lo, hi = r[f"{col} diff"], r[f"{col} low"], r[f"{col} high"]
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]{mark}"


def effects_table(summary: pd.DataFrame) -> str:
    e = paired_effects(summary, "policy", "reindex", 1)
    e = e[e.policy == "no_reindex"].copy()
    e["regime"] = e.apply(regime, axis=1)
    base = summary[(summary.k == 1) & (summary.policy == "reindex")].copy()
    base["regime"] = base.apply(regime, axis=1)
    lines = ["| regime | strategy | reindex t2i R@1 | reindex t2i F@1 | Δ t2i R@1 (no_reindex − reindex) | "
             "Δ i2t R@1 | pairs |", "|---|---|---|---|---|---|---|"]
    for reg, s, r in _cells(e):
        b = base[(base.regime == reg) & (base.strategy == s) & (base.direction == "t2i")]
        r = r.iloc[0]
        lines.append(f"| {reg} | {s} | {b.avg_final_recall.mean():.1f} | {b.forgetting.mean():.1f} | "
                     f"{_ci(r, 't2i R@1')} | {_ci(r, 'i2t R@1')} | {int(r['pairs'])} |")
    return "\n".join(lines)


def _cells(frame: pd.DataFrame):
    """(regime, strategy, rows) in table order, for the pairs that have rows."""
    for reg in REGIMES.values():
        for s in STRATEGIES:
            sub = frame[(frame.regime == reg) & (frame.strategy == s)]
            if not sub.empty:
                yield reg, s, sub


def _grid(x: pd.DataFrame, combo: str) -> str:
    return f"{x[(x.metric == f'grid:{combo}') & (x.direction == 't2i') & (x.k == 1)].value.mean():.1f}"


def anatomy_table(t: pd.DataFrame) -> str:
    a = t[t.policy == "anatomy"].copy()
    last = a.groupby("run").step.transform("max")
    a = a[(a.step == last) & (a.task_index < a.step)]  # old tasks after the last one
    a["regime"] = a.apply(regime, axis=1)
    lines = ["| regime | strategy | drift images | drift captions | alignment | as learned | reindex (new/new) | "
             "no_reindex (new q / old g) | old q / new g |", "|---|---|---|---|---|---|---|---|---|"]
    for reg, s, x in _cells(a):
        dimg = x[(x.metric == "drift") & (x.direction == "images")].value.mean()
        dcap = x[(x.metric == "drift") & (x.direction == "captions")].value.mean()
        lines.append(f"| {reg} | {s} | {dimg:.2f} | {dcap:.2f} | {x[x.metric == 'alignment'].value.mean():.2f} "
                     f"| {_grid(x, 'old_q/old_g')} | {_grid(x, 'new_q/new_g')} | {_grid(x, 'new_q/old_g')} | "
                     f"{_grid(x, 'old_q/new_g')} |")
    return "\n".join(lines)


def main(root: str = "runs/sweeps/regimes") -> None:
    c = collect(root)
    summary, t = per_run_summary(c), tidy(c)
    seeds = sorted(summary.seed.unique().tolist())
    secs = [r["provenance"]["finished"] - r["provenance"]["started"] for r in c.runs.values()]
    print(f"<!-- {len(c.runs)} runs ({len(c.incomplete)} incomplete, {len(c.failed)} failed), seeds {seeds}, "
          f"{summary.task_order.nunique()} task orders; study time {sum(secs) / 60:.0f} min in all -->\n")
    print("### no_reindex against reindex, paired over seeds and task orders (K=1)\n")
    print(effects_table(summary) + "\n")
    print("### anatomy of the old tasks after the last task (t2i R@1, mean over runs)\n")
    print(anatomy_table(t))


if __name__ == "__main__":
    main(*sys.argv[1:])
