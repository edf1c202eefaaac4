"""The tables of docs/findings.md, from the runs of `ccr sweep sweeps/regimes.yaml` (tuned strategies) or
`ccr sweep sweeps/regimes_defaults.yaml` (default hyperparameters).

    python analysis/findings_tables.py [runs/sweeps/regimes [runs/sweeps/regimes-defaults]]

Per regime (tasks.pretrain x model.freeze) and strategy: the paired effect of no_reindex against
reindex with its 95 % interval; the final recall and forgetting under reindex; and the anatomy of the
old tasks after the last task (stability per modality, alignment, the compatibility grid).
"""

from __future__ import annotations

import json
import sys

import pandas as pd

from ccr.analysis import collect, format_effect, interval, paired_effects, per_run_summary, tidy

# (tasks.pretrain, model.freeze) -> the regime's name (also used by chosen_values.py and the tests)
REGIMES = {((), "none"): "from scratch", (("pool",), "none"): "pretrained",
           (("pool",), "backbone"): "pretrained, frozen backbone", ((), "backbone"): "random features (frozen)"}
STRATEGIES = ["finetune", "ewc", "lwf", "replay", "compat", "joint"]


# sweeps/regimes.yaml names its cases (tags.regime); sweeps/regimes_defaults.yaml sets the keys directly
TAGS = {"scratch": "from scratch", "pretrained": "pretrained", "pretrained_frozen": "pretrained, frozen backbone",
        "random_frozen": "random features (frozen)"}


def regime(row: pd.Series) -> str:
    tag = row.get("cfg.tags.regime")
    if isinstance(tag, str):
        return TAGS.get(tag, tag)
    pre = row.get("cfg.tasks.pretrain", "[]")
    pre = tuple(json.loads(pre)) if isinstance(pre, str) else tuple(pre or [])
    freeze = row.get("cfg.model.freeze", "none")
    return REGIMES.get((pre, freeze), f"{list(pre)}/{freeze}")


def _ci(r: pd.Series, col: str) -> str:
    return format_effect(r[f"{col} diff"], r[f"{col} low"], r[f"{col} high"])


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
    lines = ["| regime | strategy | stability images | stability captions | alignment | as learned | "
             "reindex (new/new) | no_reindex (new q / old g) | old q / new g |",
             "|---|---|---|---|---|---|---|---|---|"]
    for reg, s, x in _cells(a):
        dimg = x[(x.metric == "stability") & (x.direction == "images")].value.mean()
        dcap = x[(x.metric == "stability") & (x.direction == "captions")].value.mean()
        lines.append(f"| {reg} | {s} | {dimg:.2f} | {dcap:.2f} | {x[x.metric == 'alignment'].value.mean():.2f} "
                     f"| {_grid(x, 'old_q/old_g')} | {_grid(x, 'new_q/new_g')} | {_grid(x, 'new_q/old_g')} | "
                     f"{_grid(x, 'old_q/new_g')} |")
    return "\n".join(lines)


def _reindex_t2i(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[(summary.k == 1) & (summary.policy == "reindex") & (summary.direction == "t2i")].copy()
    s["regime"] = s.apply(regime, axis=1)
    return s.set_index(["regime", "strategy", "seed", "task_order"])[["avg_final_recall", "forgetting"]]


def tuning_table(tuned: pd.DataFrame, default: pd.DataFrame) -> str:
    """What tuning changed: reindex t2i R@1 and F@1 at default and at tuned hyperparameters, and the
    difference paired over (seed, task order): the same data, initialisation and order in both."""
    both = _reindex_t2i(tuned).merge(_reindex_t2i(default), how="inner", left_index=True, right_index=True,
                                     suffixes=("", "_default")).reset_index()
    both["d_recall"] = both.avg_final_recall - both.avg_final_recall_default
    both["d_forget"] = both.forgetting - both.forgetting_default
    lines = ["| regime | strategy | t2i R@1 default → tuned | Δ t2i R@1 (tuned − default) | t2i F@1 default → tuned "
             "| Δ t2i F@1 | pairs |", "|---|---|---|---|---|---|---|"]
    for reg, s, g in _cells(both):
        if s in ("finetune", "joint"):  # no hyperparameter tuned: the two sweeps ran the same studies
            continue
        r, f = interval(g.d_recall.tolist()), interval(g.d_forget.tolist())
        lines.append(f"| {reg} | {s} | {g.avg_final_recall_default.mean():.1f} → {g.avg_final_recall.mean():.1f} | "
                     f"{format_effect(*r[:3])} | {g.forgetting_default.mean():.1f} → {g.forgetting.mean():.1f} | "
                     f"{format_effect(*f[:3])} | {r[3]} |")
    same = both[both.strategy.isin(["finetune", "joint"])]
    lines.append(f"\n<!-- finetune and joint, identical in both sweeps: {len(same)} pairs, largest |difference| "
                 f"{(same.avg_final_recall - same.avg_final_recall_default).abs().max():.2f} points -->")
    return "\n".join(lines)


def main(root: str = "runs/sweeps/regimes", default_root: str | None = None) -> None:
    """The tables of one regimes sweep; with `default_root` (the default-hyperparameter sweep) also what
    tuning changed."""
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
    if default_root:
        print("\n### what tuning changed under reindex, paired over seeds and task orders\n")
        print(tuning_table(summary, per_run_summary(collect(default_root))))


if __name__ == "__main__":
    main(*sys.argv[1:])
