"""Aggregates over seeds (and optionally task orders): mean, std and count of every summary metric."""

from __future__ import annotations

import pandas as pd

from ccr.measure.results import BETTER, INITIAL  # BETTER: what each question prefers (the best is highlighted)

METRICS = ["avg_final_recall", "forgetting", "bwt", "rsum", "index_cost"]


def config_columns(summary: pd.DataFrame, by_order: bool = False) -> list[str]:
    cols = ["strategy", "policy", "scope"] + sorted(c for c in summary.columns if c.startswith("cfg."))
    return cols + (["task_order"] if by_order else [])


def aggregate(summary: pd.DataFrame, by_order: bool = False) -> pd.DataFrame:
    """Per configuration (everything but the seed; and the task order unless `by_order`), direction and K."""
    if summary.empty:
        return summary
    keys = config_columns(summary, by_order) + ["direction", "k"]
    g = summary.groupby(keys, dropna=False)[METRICS + [q for q in INITIAL if q in summary]]
    out = g.agg(["mean", "std", "count"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out.reset_index()


def _cell(mean: float, std: float, digits: int = 1) -> str:
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(agg: pd.DataFrame, k: int = 1, totals: bool = True) -> str:
    """Rows: configurations; columns: R@k and forgetting per direction, BWT, index cost, n. Best in bold.
    `totals`: also rsum and the index cost, which do not depend on K (one table of several K shows them)."""
    if agg.empty:
        return "(no results)"
    a = agg[agg["k"] == k]
    cfg_cols = [c for c in config_columns(a) if a[c].nunique(dropna=False) > 1 or c in ("strategy", "policy")]
    wide: dict[tuple, dict[str, tuple[float, float]]] = {}
    counts: dict[tuple, int] = {}
    for _, r in a.iterrows():
        key = tuple(r[c] for c in cfg_cols)
        d = r["direction"]
        wide.setdefault(key, {})
        for m in METRICS:
            col = m if m in ("rsum", "index_cost") else f"{d} {m}"
            wide[key][col] = (r[f"{m}_mean"], r[f"{m}_std"])
        counts[key] = int(r["avg_final_recall_count"])
    columns = [f"{d} {m}" for d in ("i2t", "t2i") for m in ("avg_final_recall", "forgetting", "bwt")]
    columns += ["rsum", "index_cost"] if totals else []
    best = {}
    for col in columns:
        vals = [w[col][0] for w in wide.values() if col in w and not pd.isna(w[col][0])]
        if vals:
            best[col] = (max if BETTER[col.split()[-1]] == "max" else min)(vals)
    nice = {"avg_final_recall": f"R@{k}", "forgetting": f"F@{k}", "bwt": f"BWT@{k}", "rsum": "rsum",
            "index_cost": "index cost"}
    head = [*cfg_cols, *[(c.split()[0] + " " if " " in c else "") + nice[c.split()[-1]] for c in columns], "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(wide, key=lambda x: tuple(str(v) for v in x)):
        cells = [str(v) for v in key]
        for col in columns:
            if col not in wide[key]:
                cells.append("")
                continue
            mean, std = wide[key][col]
            if pd.isna(mean):  # e.g. rsum of results written before ccr recorded it
                cells.append("")
                continue
            txt = _cell(mean, std, 0 if col == "index_cost" else 1)
            cells.append(f"**{txt}**" if mean == best.get(col) and len(wide) > 1 else txt)  # best of several
        cells.append(str(counts[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def initial_table(agg: pd.DataFrame, k: int = 1) -> str:
    """What θ0 could do and what is left of it: zero-shot, transfer, control and retention per direction, one
    row per configuration (the policy never changes them: one row for all policies). Empty when none."""
    cols = [q for q in INITIAL if f"{q}_mean" in agg and agg[f"{q}_mean"].notna().any()]
    if agg.empty or not cols:
        return ""
    a = agg[agg["k"] == k]
    first = sorted(a["policy"].unique(), key=str)[0]
    a = a[a["policy"] == first]
    cfg_cols = [c for c in config_columns(a) if c != "policy" and (a[c].nunique(dropna=False) > 1 or c == "strategy")]
    nice = {"zero_shot": f"zero-shot R@{k}", "transfer": f"transfer R@{k}", "control": f"control R@{k}",
            "retention": "retention %"}
    head = [*cfg_cols, *[f"{d} {nice[q]}" for d in ("i2t", "t2i") for q in cols], "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, g in a.groupby(cfg_cols, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        by_d = {r["direction"]: r for _, r in g.iterrows()}
        cells = [str(v) for v in key]
        for d in ("i2t", "t2i"):
            for q in cols:
                r = by_d.get(d)
                cells.append("" if r is None or pd.isna(r[f"{q}_mean"]) else _cell(r[f"{q}_mean"], r[f"{q}_std"]))
        cells.append(str(int(g["avg_final_recall_count"].max())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
