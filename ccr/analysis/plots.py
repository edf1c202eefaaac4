"""Plots of a tidy results table (PNG), made to be read in report.html at a normal window size.

Each strategy keeps one colour and each indexing policy one marker (or line style) across every
figure; tasks are shown by name when all runs share one task order, by position (1 = first) when
they do not; error bars are drawn only where a mean rests on more than one run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-."]
DPI = 110
EFFECT_ROWS = 80  # configurations an effect figure draws at most (one row each)
log = logging.getLogger(__name__)


def colours(strategies) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(sorted(set(strategies)))}


def markers(policies) -> dict[str, str]:
    return {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(sorted(set(policies), key=_policy_key))}


def _policy_key(p: str) -> tuple[int, str]:
    return (0 if p == "reindex" else 1 if p == "no_reindex" else 2, p)


def task_names(d: pd.DataFrame) -> tuple[list[str], str]:
    """Labels of task positions and what they are: names under one task order, else positions."""
    orders = d["task_order"].dropna().unique() if "task_order" in d else []
    n = int(max(d["task_index"].max(), d["step"].max())) + 1 if not d.empty else 0
    if len(orders) == 1:
        names = str(orders[0]).split(">")
        return names[:n] if n else names, "task"
    return [str(i + 1) for i in range(n)], "task (position in its run's order)"


def _runs_note(d: pd.DataFrame) -> str:
    runs = d.groupby(["strategy", "policy"]).run.nunique() if "run" in d else pd.Series(dtype=int)
    if runs.empty:
        return ""
    lo, hi = int(runs.min()), int(runs.max())
    return f"mean over {lo} run{'s' if lo > 1 else ''}" if lo == hi else f"mean over {lo}–{hi} runs"


def _save(fig, path: Path) -> Path:
    """The figure as PNG, its bounds grown to every label and legend (nothing cut at the edge)."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return path


def _errorbar_or_line(ax, x, mean, std, count, **kw) -> None:
    """A line with error bars (± std) only where the mean has more than one run behind it."""
    yerr = np.where(np.asarray(count) > 1, np.nan_to_num(np.asarray(std, dtype=float)), np.nan)
    ax.plot(x, mean, **kw)
    if np.isfinite(yerr).any():
        ax.errorbar(x, mean, yerr=yerr, fmt="none", ecolor=kw.get("color"), capsize=2, lw=0.8)


def _zero_shot(tidy: pd.DataFrame, direction: str, k: int) -> pd.DataFrame:
    """θ0's zero-shot records (step -1) of one direction and K; empty for results without them."""
    if "metric" not in tidy:
        return tidy.iloc[0:0]
    return tidy[(tidy.metric == "zero_shot") & (tidy.direction == direction) & (tidy.k == k)]


def _recall(tidy: pd.DataFrame, direction: str, k: int, policies: tuple[str, ...]) -> pd.DataFrame:
    """The recall-matrix cells of one direction and K under the given policies."""
    return tidy[(tidy.metric == "recall") & (tidy.direction == direction) & (tidy.k == k) & tidy.policy.isin(policies)]


def heatmaps(tidy: pd.DataFrame, out: Path, direction: str = "t2i", k: int = 1,
             policies: tuple[str, ...] = ("reindex", "no_reindex")) -> Path | None:
    """The recall matrix of every (strategy, policy): rows after learning a task, columns the task queried;
    above them θ0's zero-shot row where the runs recorded one."""
    d = _recall(tidy, direction, k, policies)
    if d.empty:
        return None
    z = _zero_shot(tidy, direction, k)
    combos = sorted({(s, p) for s, p in zip(d.strategy, d.policy, strict=True)},
                    key=lambda c: (c[0], _policy_key(c[1])))
    names, what = task_names(d)
    n = len(names)
    ncol = min(3, len(combos))
    nrow = int(np.ceil(len(combos) / ncol))
    rows0 = int(not z.empty)
    side = 2.2 + 0.35 * (n + rows0)
    fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol + 1.2, side * nrow + 0.9), squeeze=False,
                             layout="constrained")
    vmax = max(1.0, float(np.nanmax(d.value)))
    im = None
    for idx, (ax, (s, p)) in enumerate(zip(axes.flat, combos, strict=False)):
        m = d[(d.strategy == s) & (d.policy == p)].groupby(["step", "task_index"]).value.mean().unstack()
        mat = np.full((n + rows0, n), np.nan)
        mat[rows0: rows0 + m.shape[0], : m.shape[1]] = m.values
        if rows0:
            zs = z[z.strategy == s].groupby("task_index").value.mean()
            mat[0, zs.index.astype(int)] = zs.values
        im = ax.imshow(mat, vmin=0, vmax=vmax, cmap="viridis")
        for (i, j), v in np.ndenumerate(mat):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="w" if v < 0.6 * vmax else "k")
        ax.set_title(f"{s} / {p}", fontsize=9)
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
        first_col = idx % ncol == 0
        ylabels = ["θ0 (zero-shot)"] * rows0 + [f"after {t}" for t in names]
        ax.set_yticks(range(n + rows0), ylabels if first_col else [], fontsize=7)
        if rows0:
            ax.axhline(0.5, color="w", lw=1.5)
        if idx >= len(combos) - ncol:
            ax.set_xlabel(f"{what} queried", fontsize=8)
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"{direction} R@{k} (%)")
    fig.suptitle(f"{direction} R@{k} (%) of every task after each task is learned "
                 f"(row: trained up to; {_runs_note(d)})", fontsize=10)
    return _save(fig, out / f"heatmaps_{direction}_R{k}.png")


def task_curves(tidy: pd.DataFrame, out: Path, direction: str = "t2i", k: int = 1,
                policies: tuple[str, ...] = ("reindex", "no_reindex")) -> Path | None:
    """Recall of each task along the sequence, one panel per strategy; one line style per policy; the first
    point is θ0's zero-shot recall where the runs recorded one."""
    d = _recall(tidy, direction, k, policies)
    if d.empty:
        return None
    names, what = task_names(d)
    z = _zero_shot(tidy, direction, k)
    off = int(not z.empty)
    if off:  # θ0 is the same for every policy: each policy's line starts there
        d = pd.concat([d, *[z.assign(policy=p) for p in d.policy.unique()]], ignore_index=True)
    strategies = sorted(d.strategy.unique())
    pols = sorted(d.policy.unique(), key=_policy_key)
    style = {p: LINESTYLES[i % len(LINESTYLES)] for i, p in enumerate(pols)}
    tcol = {i: plt.get_cmap("tab10")(i % 10) for i in range(len(names))}
    ncol = min(3, len(strategies))
    nrow = int(np.ceil(len(strategies) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.1 * nrow + 0.9), squeeze=False, sharey=True,
                             layout="constrained")
    x = np.arange(len(names) + off)
    for idx, (ax, s) in enumerate(zip(axes.flat, strategies, strict=False)):
        sub = d[d.strategy == s].groupby(["policy", "task_index", "step"]).value.agg(["mean", "std", "count"])
        for (p, i), g in sub.groupby(level=[0, 1]):
            g = g.droplevel([0, 1])
            _errorbar_or_line(ax, x[g.index.astype(int) + off], g["mean"], g["std"], g["count"], color=tcol[i],
                              ls=style[p], marker="o", ms=3, lw=1.2)
        ax.set_title(s, fontsize=9)
        ax.set_xticks(x, ["θ0"] * off + [f"after {t}" for t in names], rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        if idx % ncol == 0:
            ax.set_ylabel(f"{direction} R@{k} (%)")
    for ax in list(axes.flat)[len(strategies):]:
        ax.axis("off")
    handles = [Line2D([], [], color=tcol[i], marker="o", ms=3, label=t) for i, t in enumerate(names)]
    handles += [Line2D([], [], color="grey", ls=style[p], label=p) for p in pols]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), fontsize=8,
               title=f"{what} (colour) and indexing policy (line)", title_fontsize=8)
    several = bool((d.groupby(["strategy", "policy", "task_index", "step"]).value.count() > 1).any())
    fig.suptitle(f"{direction} R@{k} (%) of each task along the sequence ({_runs_note(d)}"
                 f"{'; error bars: ± std over runs' if several else ''})",
                 fontsize=10)
    return _save(fig, out / f"task_curves_{direction}_R{k}.png")


def forgetting_bars(summary: pd.DataFrame, out: Path, k: int = 1) -> Path | None:
    """Forgetting by strategy × indexing policy, both directions; ± std where there is more than one run."""
    d = summary[summary.k == k]
    if d.empty:
        return None
    strategies, policies = sorted(d.strategy.unique()), sorted(d.policy.unique(), key=_policy_key)
    col = colours(strategies)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(policies) * 2 + 2.5), 3.8), squeeze=False,
                             sharey=True, layout="constrained")
    width = 0.8 / len(strategies)
    for ax, direction in zip(axes[0], ("i2t", "t2i"), strict=True):
        g = d[d.direction == direction].groupby(["strategy", "policy"]).forgetting.agg(["mean", "std", "count"])
        for j, s in enumerate(strategies):
            rows = [g.loc[(s, p)] if (s, p) in g.index else None for p in policies]
            means = [np.nan if r is None else r["mean"] for r in rows]
            errs = [np.nan if r is None or r["count"] < 2 else r["std"] for r in rows]
            xs = np.arange(len(policies)) + j * width
            ax.bar(xs, means, width, color=col[s], label=s)
            if np.isfinite(errs).any():
                ax.errorbar(xs, means, yerr=errs, fmt="none", ecolor="k", capsize=2, lw=0.8)
        ax.set_xticks(np.arange(len(policies)) + 0.4 - width / 2, policies, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{'image → caption (i2t)' if direction == 'i2t' else 'caption → image (t2i)'}", fontsize=9)
        ax.set_xlabel("indexing policy", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"forgetting of R@{k} (points)")
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="strategy", title_fontsize=8)
    n = d.groupby(["strategy", "policy"]).run.nunique()
    fig.suptitle(f"Forgetting after the last task: best earlier R@{k} − final R@{k}, mean over old tasks "
                 f"(lower is better; {int(n.min())}–{int(n.max())} runs per bar)" if n.min() != n.max() else
                 f"Forgetting after the last task: best earlier R@{k} − final R@{k}, mean over old tasks "
                 f"(lower is better; {int(n.min())} run{'s' if n.min() > 1 else ''} per bar)", fontsize=10)
    return _save(fig, out / f"forgetting_R{k}.png")


def quality_vs_cost(summary: pd.DataFrame, out: Path, k: int = 1) -> Path | None:
    """Average final recall against the embeddings each policy computed to keep its galleries current."""
    d = summary[summary.k == k]
    if d.empty:
        return None
    g = d.groupby(["strategy", "policy", "direction"])[["avg_final_recall", "index_cost"]].mean().reset_index()
    col, mk = colours(g.strategy), markers(g.policy)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True, squeeze=False, layout="constrained")
    for ax, direction in zip(axes[0], ("i2t", "t2i"), strict=True):
        for _, r in g[g.direction == direction].iterrows():
            ax.scatter(r.index_cost, r.avg_final_recall, s=55, marker=mk[r.policy], facecolor="none",
                       edgecolor=col[r.strategy], linewidth=1.6, alpha=0.9)
        ax.set_title(f"{direction} R@{k}", fontsize=9)
        ax.set_xlabel("index cost: embeddings computed (images + captions)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"average final R@{k} (%)")
    strat = [Line2D([], [], ls="", marker="o", color=c, label=s) for s, c in col.items()]
    pol = [Line2D([], [], ls="", marker=m, mfc="none", color="k", label=p) for p, m in mk.items()]
    leg = fig.legend(handles=strat, loc="outside right upper", fontsize=8, title="strategy (colour)",
                     title_fontsize=8)
    fig.add_artist(leg)
    fig.legend(handles=pol, loc="outside right lower", fontsize=8, title="policy (shape)", title_fontsize=8)
    fig.suptitle("Retrieval quality against indexing cost (up and left is better; means over runs)", fontsize=10)
    return _save(fig, out / f"quality_vs_cost_R{k}.png")


def anatomy_plots(tidy: pd.DataFrame, out: Path, k: int = 1, direction: str = "t2i") -> list[Path]:
    """Compatibility grid after the last task (old tasks) and the stability of the first task along the sequence."""
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
        fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
        combos = list(m.columns)
        width = 0.8 / max(1, len(m.index))
        for j, s in enumerate(m.index):
            ax.bar(np.arange(len(combos)) + j * width, m.loc[s].values, width, color=col[s], label=s)
        labels = {"new_q/new_g": "new query\nnew gallery\n(reindex)", "new_q/old_g": "new query\nold gallery\n"
                  "(no_reindex)", "old_q/old_g": "old query\nold gallery\n(before)", "old_q/new_g":
                  "old query\nnew gallery"}
        ax.set_xticks(np.arange(len(combos)) + 0.4 - width / 2,
                      [labels.get(c.replace("grid:", ""), c.replace("grid:", "")) for c in combos], fontsize=8)
        ax.set_ylabel(f"{direction} R@{k} on old tasks (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("Which side broke? Old tasks after the last task, by the model that embedded the queries "
                     "and the gallery", fontsize=9)
        if ax.get_legend_handles_labels()[0]:  # no old task (one task): no bars, no legend
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="strategy", title_fontsize=8)
        paths.append(_save(fig, out / "compatibility_grid.png"))
    stab = a[(a.metric == "stability") & (a.task_index == 0)]
    if not stab.empty:
        names, _ = task_names(stab)
        first = names[0] if names and not names[0].isdigit() else "the first task"
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, layout="constrained")
        steps = sorted(stab.step.unique())
        for ax, mod in zip(axes, ("images", "captions"), strict=True):
            sub = stab[stab.direction == mod].groupby(["strategy", "step"]).value.mean().reset_index()
            for s, gg in sub.groupby("strategy"):
                ax.plot(gg.step, gg.value, marker="o", ms=3, color=col[s], label=s)
            ax.set_title(f"{mod} of {first}", fontsize=9)
            ax.set_xticks(steps, [f"after {names[i]}" if i < len(names) else str(i + 1) for i in steps],
                          rotation=30, ha="right", fontsize=7)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("stability\n(cosine, now vs when learned)")
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="strategy", title_fontsize=8)
        fig.suptitle(f"Stability: how little the embeddings of {first} move as later tasks are learned "
                     "(1 = not at all; lower = more drift)", fontsize=10)
        paths.append(_save(fig, out / "stability.png"))
    return paths


def _key(col: str) -> str:
    """A config column as a reader names it: cfg.train.lr -> train.lr, cfg.tags.regime -> regime."""
    return col.removeprefix("cfg.").removeprefix("tags.")


def effect_intervals(effects: pd.DataFrame, out: Path, k: int = 1, metric: str = "t2i R",
                     level: str = "no_reindex") -> Path | None:
    """The paired effect of one policy against reindex, with its 95 % interval, per strategy and regime
    (every swept config column): a dot and a bar per configuration, 0 marked."""
    col = f"{metric}@{k}"
    if effects.empty or f"{col} diff" not in effects or "policy" not in effects:
        return None
    e = effects[(effects.factor == "policy") & (effects.policy == level)]
    if e.empty:
        return None
    if len(e) > EFFECT_ROWS:  # a figure taller than a screen (and minutes to draw): the table holds them all
        log.info("effect of %s: %d configurations, more than a figure shows (%d): see effects.csv", level, len(e),
                 EFFECT_ROWS)
        return None
    cfg_cols = [c for c in e.columns if c.startswith("cfg.") and e[c].nunique(dropna=False) > 1]
    e = e.sort_values([*cfg_cols, "strategy"])
    labels = [" · ".join([str(r.strategy), *[f"{_key(c)}={r[c]}" for c in cfg_cols]]) for _, r in e.iterrows()]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(e) + 1.6), layout="constrained")
    y = np.arange(len(e))[::-1]
    lo, hi, mid = e[f"{col} low"].to_numpy(), e[f"{col} high"].to_numpy(), e[f"{col} diff"].to_numpy()
    excl = (lo > 0) | (hi < 0)
    ax.hlines(y, lo, hi, color=np.where(excl, "C3", "grey"), lw=2)
    ax.plot(mid, y, "o", color="k", ms=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    intervals = bool(np.isfinite(lo).any())  # one pair per configuration gives no interval
    ax.set_xlabel(f"Δ {col}, {level} − reindex (points{', 95 % interval' if intervals else ''})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Does {level} change {col}?" + (" (red: interval excludes 0)" if intervals else
                                                  " (one pair each: no interval)"), fontsize=10)
    return _save(fig, out / f"effect_{level}_{col.replace(' ', '_').replace('@', '')}.png")


def _text(v) -> str:
    """A table cell as a label: missing values (NaN, None) as "–"."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return str(v)


def stability_vs_forgetting(tidy: pd.DataFrame, summary: pd.DataFrame, out: Path, k: int = 1) -> Path | None:
    """Per run: mean stability of old tasks' image embeddings after the last task (cosine to when learned)
    against t2i forgetting under reindex, coloured by strategy; one marker per swept configuration (regime)."""
    a = tidy[(tidy.policy == "anatomy") & (tidy.metric == "stability") & (tidy.direction == "images")]
    s = summary[(summary.k == k) & (summary.direction == "t2i") & (summary.policy == "reindex")]
    if a.empty or s.empty:
        return None
    last = a.groupby("run").step.transform("max")
    d = a[(a.step == last) & (a.task_index < a.step)].groupby("run").value.mean().rename("stability")
    m = s.set_index("run").join(d, how="inner")
    if m.empty:
        return None
    cfg_cols = [c for c in m.columns if c.startswith("cfg.") and m[c].nunique(dropna=False) > 1]
    # a key some runs lack (results of an older ccr, another source) is "–" there, never a float NaN in a join
    regime = m[cfg_cols].apply(lambda col: col.map(_text)).agg(" · ".join, axis=1) if cfg_cols \
        else pd.Series("all", index=m.index)
    col, mk = colours(m.strategy), {r: MARKERS[i % len(MARKERS)] for i, r in enumerate(sorted(set(regime)))}
    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    for (strat, reg), g in m.assign(regime=regime).groupby(["strategy", "regime"]):
        ax.scatter(g.stability, g.forgetting, color=col[strat], marker=mk[reg], s=22, alpha=0.8)
    ax.set_xlabel("stability of old tasks' image embeddings after the last task: cosine to when learned "
                  "(1 = no drift)")
    ax.set_ylabel(f"t2i forgetting of R@{k} under reindex (points)")
    ax.grid(alpha=0.3)
    strat = [Line2D([], [], ls="", marker="o", color=c, label=s_) for s_, c in col.items()]
    regs = [Line2D([], [], ls="", marker=m_, color="k", label=r) for r, m_ in mk.items()]
    leg = fig.legend(handles=strat, loc="outside right upper", fontsize=7, title="strategy", title_fontsize=8)
    if cfg_cols:  # one configuration: no marker legend to read
        fig.add_artist(leg)
        fig.legend(handles=regs, loc="outside right lower", fontsize=7, title=" · ".join(_key(c) for c in cfg_cols),
                   title_fontsize=8)
    ax.set_title("Stability against forgetting, one point per run", fontsize=10)
    return _save(fig, out / "stability_vs_forgetting.png")
