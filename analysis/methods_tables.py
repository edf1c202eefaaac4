"""The tables of docs/findings.md's section on pretrained-model methods (LoRA, WiSE-FT, ZSCL against finetune
and the earlier strategies), from the runs of `ccr sweep sweeps/pretrained_methods.yaml`.

    python analysis/methods_tables.py [runs/sweeps/pretrained-methods]

Per regime and method: the paired effect of no_reindex against reindex with its 95 % interval, the final
recall and forgetting under reindex, θ0's zero-shot recall, control recall and its retention (tasks never
trained), and the anatomy of the old tasks after the last task: stability since θ0 and since the model that
learned them, and the compatibility grid (new queries on the old gallery against the re-indexed one).
"""

from __future__ import annotations

import sys

import pandas as pd
from findings_tables import regime  # this folder's sibling script: run as a script

from ccr.analysis import collect, format_effect, paired_effects, per_run_summary, tidy

METHODS = ["finetune", "lora", "wiseft", "zscl", "ewc", "lwf", "replay", "compat"]
REGIME_ORDER = ["pretrained", "pretrained, frozen backbone"]


def method(row: pd.Series) -> str:
    tag = row.get("cfg.tags.method")
    return tag if isinstance(tag, str) else row["strategy"]


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["regime"] = frame.apply(regime, axis=1)
    frame["method"] = frame.apply(method, axis=1)
    return frame


def _cells(frame: pd.DataFrame):
    for reg in REGIME_ORDER:
        for m in METHODS:
            sub = frame[(frame.regime == reg) & (frame.method == m)]
            if not sub.empty:
                yield reg, m, sub


def effects_table(summary: pd.DataFrame) -> str:
    s = summary.copy()
    s["strategy"] = s.apply(method, axis=1)  # pair within each method (LoRA is finetune with an adapter)
    e = _label(paired_effects(s, "policy", "reindex", 1))
    e = e[e.policy == "no_reindex"]
    base = _label(summary[(summary.k == 1) & (summary.policy == "reindex")])
    lines = ["| regime | method | reindex t2i R@1 | reindex t2i F@1 | Δ t2i R@1 (no_reindex − reindex) | Δ i2t R@1 | "
             "zero-shot t2i R@1 | control t2i R@1 | retention | pairs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for reg, m, r in _cells(e):
        b = base[(base.regime == reg) & (base.method == m) & (base.direction == "t2i")]
        r = r.iloc[0]
        ci = {c: format_effect(r[f"{c} diff"], r[f"{c} low"], r[f"{c} high"]) for c in ("t2i R@1", "i2t R@1")}
        lines.append(f"| {reg} | {m} | {b.avg_final_recall.mean():.1f} | {b.forgetting.mean():.1f} | "
                     f"{ci['t2i R@1']} | {ci['i2t R@1']} | {b.zero_shot.mean():.1f} | {b.control.mean():.1f} | "
                     f"{b.retention.mean():.0f} % | {int(r['pairs'])} |")
    return "\n".join(lines)


def _grid(x: pd.DataFrame, combo: str) -> str:
    return f"{x[(x.metric == f'grid:{combo}') & (x.direction == 't2i') & (x.k == 1)].value.mean():.1f}"


def anatomy_table(t: pd.DataFrame) -> str:
    a = t[t.policy == "anatomy"]
    last = a.groupby("run").step.transform("max")
    a = _label(a[(a.step == last) & (a.task_index < a.step)])  # old tasks after the last one
    lines = ["| regime | method | stability since θ0 (img / cap) | stability since learned (img / cap) | as learned | "
             "reindex (new/new) | no_reindex (new q / old g) |", "|---|---|---|---|---|---|---|"]
    for reg, m, x in _cells(a):
        cos = {(metric, mod): x[(x.metric == metric) & (x.direction == mod)].value.mean()
               for metric in ("stability", "stability_from_init") for mod in ("images", "captions")}
        lines.append(f"| {reg} | {m} | {cos['stability_from_init', 'images']:.2f} / "
                     f"{cos['stability_from_init', 'captions']:.2f} | {cos['stability', 'images']:.2f} / "
                     f"{cos['stability', 'captions']:.2f} | {_grid(x, 'old_q/old_g')} | {_grid(x, 'new_q/new_g')} | "
                     f"{_grid(x, 'new_q/old_g')} |")
    return "\n".join(lines)


def main(root: str = "runs/sweeps/pretrained-methods") -> None:
    c = collect(root)
    summary, t = per_run_summary(c), tidy(c)
    secs = [r["provenance"]["finished"] - r["provenance"]["started"] for r in c.runs.values()]
    print(f"<!-- {len(c.runs)} runs ({len(c.incomplete)} incomplete, {len(c.failed)} failed), seeds "
          f"{sorted(summary.seed.unique().tolist())}, {summary.task_order.nunique()} task orders; study time "
          f"{sum(secs) / 60:.0f} min in all -->\n")
    print("### no_reindex against reindex, θ0 and control data, paired over seeds and task orders (K=1)\n")
    print(effects_table(summary) + "\n")
    print("### anatomy of the old tasks after the last task (cosines; t2i R@1, mean over runs)\n")
    print(anatomy_table(t))


if __name__ == "__main__":
    main(*sys.argv[1:])
