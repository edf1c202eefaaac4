"""Plots of a tidy results table (PNG). Each strategy keeps one colour across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def colours(strategies) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(sorted(set(strategies)))}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmaps(tidy: pd.DataFrame, out: Path, direction: str = "t2i", k: int = 1,
             policies: tuple[str, ...] = ("reindex", "no_reindex")) -> Path | None:
    """Mean recall matrix per (strategy, policy)."""
    d = tidy[(tidy.metric == "recall") & (tidy.direction == direction) & (tidy.k == k) & tidy.policy.isin(policies)]
    if d.empty:
        return None
    combos = sorted({(s, p) for s, p in zip(d.strategy, d.policy, strict=True)})
    ncol = min(4, len(combos))
    nrow = int(np.ceil(len(combos) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (s, p) in zip(axes.flat, combos, strict=False):
        sub = d[(d.strategy == s) & (d.policy == p)]
        m = sub.groupby(["step", "task_index"]).value.mean().unstack()
        n = max(m.shape)
        mat = np.full((n, n), np.nan)
        mat[: m.shape[0], : m.shape[1]] = m.values
        im = ax.imshow(mat, vmin=0, vmax=max(1.0, float(np.nanmax(d.value))), cmap="viridis")
        for (i, j), v in np.ndenumerate(mat):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 40 else "k")
        ax.set_title(f"{s} / {p}", fontsize=9)
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("trained up to")
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"{direction} R@{k} (%)")
    fig.savefig(out / f"heatmaps_{direction}_R{k}.png", dpi=110)
    plt.close(fig)
    return out / f"heatmaps_{direction}_R{k}.png"


def task_curves(tidy: pd.DataFrame, out: Path, direction: str = "t2i", k: int = 1,
                policy: str = "reindex") -> Path | None:
    """Recall of each task along the sequence, one panel per strategy."""
    d = tidy[(tidy.metric == "recall") & (tidy.direction == direction) & (tidy.k == k) & (tidy.policy == policy)]
    if d.empty:
        return None
    strategies = sorted(d.strategy.unique())
    fig, axes = plt.subplots(1, len(strategies), figsize=(3 * len(strategies), 2.8), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], strategies, strict=True):
        sub = d[d.strategy == s].groupby(["task_index", "step"]).value.agg(["mean", "std"]).reset_index()
        for i, g in sub.groupby("task_index"):
            ax.errorbar(g.step + 1, g["mean"], yerr=g["std"].fillna(0), marker="o", ms=3, capsize=2,
                        label=f"task {i + 1}")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("trained up to task")
    axes[0][0].set_ylabel(f"{direction} R@{k} (%) [{policy}]")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out / f"task_curves_{direction}_R{k}_{policy}.png")


def forgetting_bars(summary: pd.DataFrame, out: Path, k: int = 1) -> Path | None:
    """Forgetting by strategy x indexing policy, mean ± std over seeds, both directions."""
    d = summary[summary.k == k]
    if d.empty:
        return None
    strategies, policies = sorted(d.strategy.unique()), sorted(d.policy.unique())
    col = colours(strategies)
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.1 * len(policies) * 2 + 1.5), 3.4), squeeze=False)
    width = 0.8 / len(strategies)
    for ax, direction in zip(axes[0], ("i2t", "t2i"), strict=True):
        g = d[d.direction == direction].groupby(["strategy", "policy"]).forgetting.agg(["mean", "std"])
        for j, s in enumerate(strategies):
            means = [g["mean"].get((s, p), np.nan) for p in policies]
            stds = [g["std"].get((s, p), 0) for p in policies]
            ax.bar(np.arange(len(policies)) + j * width, means, width, yerr=np.nan_to_num(stds), capsize=2,
                   color=col[s], label=s)
        ax.set_xticks(np.arange(len(policies)) + 0.4 - width / 2)
        ax.set_xticklabels(policies, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{direction} forgetting @R{k}")
        ax.axhline(0, color="k", lw=0.5)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out / f"forgetting_R{k}.png")


def quality_vs_cost(summary: pd.DataFrame, out: Path, k: int = 1, direction: str = "t2i") -> Path | None:
    d = summary[(summary.k == k) & (summary.direction == direction)]
    if d.empty:
        return None
    g = d.groupby(["strategy", "policy"])[["avg_final_recall", "index_cost"]].mean().reset_index()
    col = colours(g.strategy)
    mk = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(sorted(g.policy.unique()))}
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, r in g.iterrows():
        ax.scatter(r.index_cost, r.avg_final_recall, color=col[r.strategy], marker=mk[r.policy], s=40)
    for s, c in col.items():
        ax.scatter([], [], color=c, label=s)
    for p, m in mk.items():
        ax.scatter([], [], color="grey", marker=m, label=p)
    ax.set_xlabel("embeddings computed for indexing")
    ax.set_ylabel(f"avg final {direction} R@{k} (%)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / f"quality_vs_cost_{direction}_R{k}.png")


def anatomy_plots(tidy: pd.DataFrame, out: Path, k: int = 1, direction: str = "t2i") -> list[Path]:
    """Compatibility grid after the last task (old tasks) and drift of the first task along the sequence."""
    a = tidy[tidy.policy == "anatomy"]
    if a.empty:
        return []
    paths = []
    col = colours(a.strategy)
    grid = a[a.metric.str.startswith("grid:") & (a.direction == direction) & (a.k == k)]
    if not grid.empty:
        last = grid.groupby("run").step.transform("max")
        g = grid[(grid.step == last) & (grid.task_index < grid.step)]
        m = g.groupby(["strategy", "metric"]).value.mean().unstack()
        fig, ax = plt.subplots(figsize=(7, 3.4))
        combos = list(m.columns)
        width = 0.8 / max(1, len(m.index))
        for j, s in enumerate(m.index):
            ax.bar(np.arange(len(combos)) + j * width, m.loc[s].values, width, color=col[s], label=s)
        ax.set_xticks(np.arange(len(combos)) + 0.4 - width / 2)
        ax.set_xticklabels([c.replace("grid:", "") for c in combos], fontsize=8)
        ax.set_ylabel(f"{direction} R@{k} on old tasks (%)")
        ax.set_title("compatibility grid after the last task (query model / gallery model)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        paths.append(_save(fig, out / "compatibility_grid.png"))
    drift = a[(a.metric == "drift") & (a.task_index == 0)]
    if not drift.empty:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
        for ax, mod in zip(axes, ("images", "captions"), strict=True):
            sub = drift[drift.direction == mod].groupby(["strategy", "step"]).value.mean().reset_index()
            for s, g in sub.groupby("strategy"):
                ax.plot(g.step + 1, g.value, marker="o", ms=3, color=col[s], label=s)
            ax.set_title(f"drift of task 1 {mod}", fontsize=9)
            ax.set_xlabel("trained up to task")
        axes[0].set_ylabel("mean cosine θ_1 vs θ_s")
        axes[1].legend(fontsize=7)
        paths.append(_save(fig, out / "drift.png"))
    return paths
