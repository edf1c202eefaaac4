"""Plots of re-indexing economics: backfill curves (recall against the fraction of the old gallery re-embedded)
and the cost of each policy at a gallery size, in the colours and markers of ccr.analysis.plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ccr.analysis.plots import LINESTYLES, MARKERS, _save, colours


def backfill_curves(curve: pd.DataFrame, out: Path, k: int = 1, direction: str = "t2i") -> Path | None:
    """After the last task: recall over the seen tasks against the fraction of the old gallery re-embedded,
    one line per strategy (colour) and order (line style); means over runs."""
    if curve.empty:
        return None
    c = curve[(curve.k == k) & (curve.direction == direction)]
    c = c[c.step == c.groupby("run").step.transform("max")]
    if c.empty:
        return None
    m = c.groupby(["strategy", "order", "fraction"]).recall.mean().reset_index()
    col = colours(m.strategy)
    styles = {o: LINESTYLES[i % len(LINESTYLES)] for i, o in enumerate(sorted(m.order.unique()))}
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    for (s, o), g in m.groupby(["strategy", "order"]):
        ax.plot(100 * g.fraction, g.recall, ls=styles[o], marker="o", ms=3, color=col[s])
    ax.set_xlabel("old gallery re-embedded with the new model (%)")
    ax.set_ylabel(f"{direction} R@{k}, mean over the seen tasks")
    ax.grid(alpha=0.3)
    strat = [Line2D([], [], color=c_, label=s_) for s_, c_ in col.items()]
    ords = [Line2D([], [], color="k", ls=ls, label=o) for o, ls in styles.items()]
    leg = fig.legend(handles=strat, loc="outside right upper", fontsize=7, title="strategy", title_fontsize=8)
    fig.add_artist(leg)
    fig.legend(handles=ords, loc="outside right lower", fontsize=7, title="order", title_fontsize=8)
    ax.set_title("Backfill after the last task: 0 % is no_reindex, 100 % is reindex", fontsize=10)
    return _save(fig, out / f"backfill_curve_{direction}_R{k}.png")


def cost_at_scale(costs: pd.DataFrame, curve_costs: pd.DataFrame, out: Path, n: int, k: int = 1) -> Path | None:
    """Recall after the last task against the device-hours of that (last) model update at a gallery of n images:
    a point per strategy × policy, the backfill curve (in its `oldest` order where measured, else its first)
    through it, from embedding only the new task (no_reindex) to re-embedding everything (reindex)."""
    col_r = f"t2i R@{k}"
    if costs.empty or costs.device_hours_last.isna().all():
        return None
    col = colours(costs.strategy)
    pols = sorted(costs.policy.unique())
    mk = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(pols)}
    fig, ax = plt.subplots(figsize=(8, 4.4), layout="constrained")
    for _, r in costs.iterrows():
        ax.scatter(r.device_hours_last, r[col_r], color=col[r.strategy], marker=mk[r.policy], s=36, zorder=3)
    lines = not curve_costs.empty and curve_costs.device_hours.notna().any()
    if lines:
        for s, g in curve_costs.groupby("strategy"):
            o = "oldest" if "oldest" in set(g.order) else sorted(g.order)[0]
            g = g[g.order == o].sort_values("fraction")
            ax.plot(g.device_hours, g.recall, color=col.get(s, "k"), lw=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel(f"device-hours of the last model update (re-embedding, and index building where calibrated), "
                  f"gallery of {n:,} images")
    ax.set_ylabel(f"t2i R@{k} after the last task (%)")
    ax.grid(alpha=0.3, which="both")
    strat = [Line2D([], [], color=c_, marker="o", ls="", label=s_) for s_, c_ in col.items()]
    pol = [Line2D([], [], color="k", marker=m_, ls="", label=p) for p, m_ in mk.items()]
    leg = fig.legend(handles=strat, loc="outside right upper", fontsize=7, title="strategy", title_fontsize=8)
    fig.add_artist(leg)
    fig.legend(handles=pol, loc="outside right lower", fontsize=7, title="policy", title_fontsize=8)
    ax.set_title("What each policy costs at scale and what it buys" + (" (lines: the backfill curve)" if lines else
                                                                        ""), fontsize=10)
    return _save(fig, out / f"cost_at_scale_R{k}.png")
