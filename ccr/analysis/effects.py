"""Paired effects: is a difference between two indexing policies, or between a strategy and fine-tuning,
real, or within the noise of seeds and task orders?

A mean ± std over three seeds is not a test. Runs that share a seed and a task order share their data
order and initialisation, so the difference *within* such a pair is what the factor did; its mean
over pairs gets a 95 % confidence interval from Student's t with n − 1 degrees of freedom (no interval
for one pair). An effect whose interval excludes 0 is marked.
"""

from __future__ import annotations

import math

import pandas as pd

from ccr.analysis.aggregate import config_columns

# two-sided 95 %: the 0.975 quantile of Student's t by degrees of freedom (beyond 30: the usual table)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
METRICS = {"avg_final_recall": "R", "forgetting": "F"}


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    return 2.021 if df <= 40 else 2.000 if df <= 60 else 1.980 if df <= 120 else 1.960


def interval(diffs: list[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of paired differences; low = high = nan when n < 2."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan, math.nan, n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def paired_effects(summary: pd.DataFrame, factor: str, baseline: str, k: int) -> pd.DataFrame:
    """For every configuration and every level of `factor` (policy or strategy) but `baseline`: the mean
    difference level − baseline of average final recall and forgetting, per direction, paired over
    (seed, task order), with its 95 % interval and the number of pairs."""
    s = summary[summary.k == k]
    if s.empty or baseline not in set(s[factor]):
        return pd.DataFrame()
    keep = [c for c in config_columns(s) if c != factor]
    # a strategy's own hyperparameters belong to the level, not to the configuration: they pair with
    # the baseline's runs (which have none) and only split the level's rows
    own = [c for c in keep if factor == "strategy" and c.startswith("cfg.strategy.params.")]
    on = [c for c in keep if c not in own]
    pair = ["seed", "task_order"]
    rows = []
    base = s[s[factor] == baseline].drop(columns=own).set_index([*on, *pair, "direction"])
    for level in sorted(set(s[factor]) - {baseline}):
        other = s[s[factor] == level].set_index([*on, *pair, "direction"])
        both = other.join(base, how="inner", lsuffix="", rsuffix="_base")
        if both.empty:
            continue
        both = both.reset_index()
        for cfg, g in both.groupby(keep, dropna=False):
            cfg = cfg if isinstance(cfg, tuple) else (cfg,)
            row = {**dict(zip(keep, cfg, strict=True)), factor: level, "baseline": baseline, "k": k}
            for metric, short in METRICS.items():
                for d in ("i2t", "t2i"):
                    gd = g[g.direction == d]
                    diffs = (gd[metric] - gd[f"{metric}_base"]).dropna().tolist()
                    if not diffs:
                        continue
                    mean, lo, hi, n = interval(diffs)
                    row.update({f"{d} {short}@{k} diff": mean, f"{d} {short}@{k} low": lo,
                                f"{d} {short}@{k} high": hi})
                    row["pairs"] = n
            rows.append(row)
    return pd.DataFrame(rows).sort_values([*keep, factor], kind="stable").reset_index(drop=True) if rows \
        else pd.DataFrame()


def format_effect(mean: float, low: float, high: float) -> str:
    """`+1.2 [+0.5, +2.0] *`: the difference, its 95 % interval, and * when the interval excludes 0."""
    if pd.isna(low):
        return f"{mean:+.1f}"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]" + (" *" if low > 0 or high < 0 else "")


def effects_markdown(effects: pd.DataFrame, factor: str, k: int) -> str:
    """One row per configuration and level: difference [95 % interval] per metric, * when 0 is outside."""
    if effects.empty:
        return "(no pairs)"
    keep = [c for c in effects.columns if c in ("strategy", "policy", "scope") or c.startswith("cfg.")]
    keep = [c for c in keep if c != factor and (effects[c].nunique(dropna=False) > 1 or c == "strategy")]
    cols = [f"{d} {m}@{k}" for m in ("R", "F") for d in ("i2t", "t2i")]
    head = [*keep, f"{factor} − baseline", *[f"Δ {c}" for c in cols], "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in effects.iterrows():
        cells = [str(r[c]) for c in keep] + [f"{r[factor]} − {r['baseline']}"]
        for c in cols:
            mean, lo, hi = r.get(f"{c} diff"), r.get(f"{c} low"), r.get(f"{c} high")
            cells.append("" if mean is None or pd.isna(mean) else format_effect(mean, lo, hi))
        cells.append(str(int(r["pairs"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
