"""The field's table (`ccr analyze` -> field_table.csv / .md / .tex): Transfer, Avg. and Last as ZSCL and the MTIL
papers after it report them, per retrieval direction, θ0's zero-shot row, each classification set at θ0 and after
the last task, and the cost columns beside them (trainable parameters, extra storage, peak memory,
training device-hours).

Transfer, Avg. and Last are ZSCL's own definitions, from its code (github.com/Thunderbeee/ZSCL,
mtil/results.ipynb, `statistics`), on the matrix A[j, i] = the measure of task i after learning task j, every task
measured after every step (ccr: the recall matrix below its diagonal and on it; `eval.transfer` above it):
    Transfer = mean over tasks i = 2..n of mean(A[j, i] for j < i)   (before task i was learned; θ0 not among them)
    Avg.     = mean over tasks i of mean(A[:, i])                     (every step, before and after learning i)
    Last     = mean of A[n, :]                                        (after the last task)
ccr's own metric `transfer/...` counts θ0 among the steps before a task; this table does not, as ZSCL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ccr.measure.metrics import DIRECTIONS
from ccr.measure.results import upgrade


def zscl_metrics(a: np.ndarray) -> dict[str, float]:
    """Transfer, Avg. and Last of A (n steps x n tasks, NaN where not measured) in ZSCL's definitions."""
    a = np.asarray(a, dtype=float)
    n = a.shape[0]
    transfer = float(np.mean([a[:i, i].mean() for i in range(1, n)])) if n > 1 else float("nan")
    return {"Transfer": transfer, "Avg.": float(a.mean(axis=0).mean()), "Last": float(a[-1].mean())}


def _square(rows: Any, n: int) -> np.ndarray:
    """A matrix as results.json holds it (rows of numbers or nulls, possibly shorter) as n x n, NaN elsewhere."""
    out = np.full((n, n), np.nan)
    for j, row in enumerate(rows[:n] if isinstance(rows, list) else []):
        for i, v in enumerate(row[:n] if isinstance(row, list) else []):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[j, i] = v
    return out


def full_matrix(res: dict[str, Any], policy: str, direction: str, k: int) -> np.ndarray:
    """A[j, i] of one policy: its recall on and below the diagonal, the policy-free transfer above it (NaN where
    eval.transfer was off)."""
    n = len(res["task_order"])
    out = np.where(np.tril(np.ones((n, n), bool)),
                   _square(res["by_policy"][policy]["recall"].get(direction, {}).get(str(k)), n), np.nan)
    tr = ((res.get("transfer") or {}).get("recall") or {}).get(direction, {}).get(str(k))
    if tr is not None:
        out = np.where(np.triu(np.ones((n, n), bool), 1), _square(tr, n), out)
    return out


def costs(res: dict[str, Any]) -> dict[str, float]:
    """The run's cost columns from its per-task training records (NaN where an older ccr did not record one)."""
    train = [t for t in res["train"] if isinstance(t, dict)] if isinstance(res.get("train"), list) else []

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def most(key: str) -> float:
        vals = [t[key] for t in train if number(t.get(key))]
        return float(max(vals)) if vals else float("nan")

    last = train[-1] if train else {}
    kept = [last.get("kept_state_mb"), last.get("kept_items_mb")]
    peak = most("peak_cuda_mb")
    resources = (res.get("config") or {}).get("resources")
    workers = resources.get("workers", 1) if isinstance(resources, dict) else 1
    workers = workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1 else 1
    seconds = [t["seconds"] for t in train if number(t.get("seconds"))]
    return {"trainable params (M)": most("trainable_params") / 1e6,
            "extra storage (MB)": float(sum(kept)) if all(number(v) for v in kept) else float("nan"),
            "peak memory (MiB)": peak if not np.isnan(peak) else most("peak_rss_mb"),
            "train device-hours": sum(seconds) * workers / 3600 if seconds else float("nan")}


def field_rows(runs: dict[str, dict[str, Any]], k: int = 1) -> pd.DataFrame:
    """One row per run and policy (and one per run for θ0), the field's columns; `field_table` averages them."""
    rows = []
    for name, raw in runs.items():
        res = upgrade(raw)
        sets = res.get("classification") or {}
        zs = ((res.get("zero_shot") or {}).get("recall") or {})
        row0: dict[str, Any] = {"run": name, "strategy": "zero-shot (θ0)", "policy": "–"}
        for d in DIRECTIONS:
            z = np.array([np.nan if v is None else v for v in zs.get(d, {}).get(str(k), [])], dtype=float)
            if len(z):
                row0.update({f"{d} Transfer": float(z[1:].mean()) if len(z) > 1 else np.nan,
                             f"{d} Avg.": float(z.mean()), f"{d} Last": float(z.mean())})
        for s, v in sets.items():
            row0[f"{s} top-1"] = (v["top1"] or [None])[0]
        rows.append(row0)
        cost = costs(res)  # the run's, whatever the policy
        for policy in res["by_policy"]:
            row = {"run": name, "strategy": res.get("strategy", "?"), "policy": policy}
            for d in DIRECTIONS:
                row.update({f"{d} {m}": v for m, v in zscl_metrics(full_matrix(res, policy, d, k)).items()})
            for s, v in sets.items():
                row[f"{s} top-1"] = (v["top1"] or [None])[-1]
            rows.append({**row, **cost})
    return pd.DataFrame(rows)


def field_table(runs: dict[str, dict[str, Any]], k: int = 1) -> pd.DataFrame:
    """The field's table: the mean over runs (seeds, orders) of each strategy x policy, θ0 first, with n."""
    rows = field_rows(runs, k)
    if rows.empty:
        return rows
    cols = [c for c in rows.columns if c not in ("run", "strategy", "policy")]
    table = rows.groupby(["strategy", "policy"], sort=False)[cols].mean().reset_index()
    table["n"] = rows.groupby(["strategy", "policy"], sort=False).size().to_numpy()
    zero = table["strategy"] == "zero-shot (θ0)"
    return pd.concat([table[zero], table[~zero].sort_values(["strategy", "policy"])], ignore_index=True)


def _cell(v: Any, decimals: int) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.{decimals}f}"
    return str(v)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("θ", r"$\theta$")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, caption: str, decimals: list[int]) -> str:
    """A booktabs tabular of the table (\\usepackage{booktabs}), ready for a paper's table environment; each column
    to its number of `decimals` (as the markdown tables of ccr analyze: `html_report.column_decimals`)."""
    cols = list(table.columns)
    lines = [r"\begin{tabular}{ll" + "r" * (len(cols) - 2) + "}", r"\toprule",
             " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    for r in table.itertuples(index=False):
        lines.append(" & ".join(_tex(_cell(v, d)) for v, d in zip(r, decimals, strict=True)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {caption}"]
    return "\n".join(lines) + "\n"
