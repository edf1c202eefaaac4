"""The README's result tables, from the runs of `bash analysis/strategies.sh runs/strategies`.

    python analysis/readme_tables.py [runs/strategies]

Prints Markdown: mean ± std over seeds of the final average R@1 and forgetting per direction and the
embeddings computed for indexing, per strategy and policy; then the anatomy of forgetting of the
fine-tuning baseline after the last task.
"""

from __future__ import annotations

import sys

import pandas as pd

from ccr.analysis import collect, per_run_summary, tidy


def _pm(values: pd.Series, digits: int = 1) -> str:
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def policy_table(summary: pd.DataFrame, strategies: list[str], policies: list[str]) -> str:
    s = summary[summary.k == 1]
    lines = ["| strategy | policy | i2t R@1 | i2t forgetting | t2i R@1 | t2i forgetting | embeddings for indexing |",
             "|---|---|---|---|---|---|---|"]
    for st in strategies:
        for p in policies:
            rows = s[(s.strategy == st) & (s.policy == p)]
            if rows.empty:
                continue
            cells = []
            for d in ("i2t", "t2i"):
                r = rows[rows.direction == d]
                cells += [_pm(r.avg_final_recall), _pm(r.forgetting)]
            cost = rows[rows.direction == "t2i"].index_cost.mean()
            lines.append(f"| {st} | {p} | " + " | ".join(cells) + f" | {cost:.0f} |")
    return "\n".join(lines)


def anatomy_table(t: pd.DataFrame, strategy: str = "finetune") -> str:
    a = t[(t.strategy == strategy) & (t.policy == "anatomy")]
    last = a.step.max()
    a = a[a.step == last]
    order = a.sort_values("task_index").drop_duplicates("task_index")[["task_index", "task"]].values.tolist()
    combos = [("old_q/old_g", "as learned θ_i/θ_i"), ("new_q/new_g", f"reindex θ_{last + 1}/θ_{last + 1}"),
              ("new_q/old_g", f"no_reindex θ_{last + 1} queries/θ_i gallery"),
              ("old_q/new_g", f"θ_i queries/θ_{last + 1} gallery")]
    head = ["task (learned at)", *[c[1] for c in combos], "stability images", "stability captions",
            f"alignment θ_{last + 1}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, task in order:
        at = a[a.task_index == i]
        cells = [_pm(at[(at.metric == f"grid:{c}") & (at.direction == "t2i") & (at.k == 1)].value)
                 for c, _ in combos]
        cells += [f"{at[(at.metric == 'stability') & (at.direction == m)].value.mean():.2f}"
                  for m in ("images", "captions")]
        cells.append(f"{at[at.metric == 'alignment'].value.mean():.2f}")
        lines.append(f"| {task} ({i + 1}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(root: str = "runs/strategies") -> None:
    c = collect(root)
    summary, t = per_run_summary(c), tidy(c)
    seeds = sorted(summary.seed.unique().tolist())
    print(f"<!-- {len(c.runs)} runs, seeds {seeds} -->\n")
    print("### strategies x indexing policies\n")
    strategies = ["finetune", "joint", "ewc", "lwf", "replay", "freeze", "compat", "agem"]
    print(policy_table(summary, strategies, ["reindex", "no_reindex"]) + "\n")
    print("### further policies\n")
    print(policy_table(summary, ["finetune", "replay"], ["reindex_images", "reindex_captions", "backfill",
                                                          "drift_map"]) + "\n")
    print("### anatomy (finetune)\n")
    print(anatomy_table(t) + "\n")
    learned = t[(t.strategy == "finetune") & (t.metric == "alignment") & (t.step == t.task_index)]
    print(f"alignment right after each task is learned (mean): {learned.value.mean():.2f}")
    first = t[(t.strategy == "finetune") & (t.policy == "reindex") & (t.metric == "recall") & (t.step == 0)
              & (t.direction == "t2i")]
    for k in (1, 10):
        print(f"finetune t2i R@{k} right after the first task: {first[first.k == k].value.mean():.1f} "
              f"(seeds {', '.join(f'{v:.1f}' for v in first[first.k == k].value)})")


if __name__ == "__main__":
    main(*sys.argv[1:])
