"""The tables of docs/findings.md's re-indexing section, from `ccr sweep sweeps/reindexing.yaml` (and
sweeps/approx.yaml for the approximate index):

    python analysis/reindexing_tables.py runs/sweeps/reindexing [runs/sweeps/approx]

Per regime and strategy (means over 3 seeds x 2 task orders), after the last task: recall with none and all
of the old gallery re-embedded, the fraction each backfill order needs for 90 % of full backfill's recall,
the negative flips of each policy, and what backfilling that fraction instead of all of it saves when a
gallery of 1B images (and its captions) is re-embedded on one H200 at the throughputs of docs/benchmarks.md.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from ccr.analysis import backfill_summary, collect, curve_frame, metric

H200 = {"images_per_second": 5810, "captions_per_second": 20593}  # ViT-B/16, BERT-base (docs/benchmarks.md)
N = 10**9
REGIMES = ["scratch", "pretrained", "pretrained_frozen"]
STRATEGIES = ["finetune", "replay", "compat"]


def _regime(res: dict) -> str:
    return (res["config"].get("tags") or {}).get("regime", "")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def backfill_table(runs: dict) -> str:
    lines = ["| regime | strategy | t2i R@1 none / full | f for 90 %: oldest | random | drift | ambiguity | "
             "saved at 1B images (oldest) |", "|---|---|---|---|---|---|---|---|"]
    ratio = []
    for res in runs.values():
        first = res["by_policy"]["reindex"]["index_cost"]["per_step"][0]
        ratio.append(first["captions"] / first["images"])
    r = float(np.mean(ratio))
    full_hours = (N / H200["images_per_second"] + r * N / H200["captions_per_second"]) / 3600
    for reg in REGIMES:
        sub = {n: x for n, x in runs.items() if _regime(x) == reg}
        bs = backfill_summary(curve_frame(sub), 1)
        if bs.empty:
            continue
        for s in STRATEGIES:
            b = bs[(bs.strategy == s) & (bs.direction == "t2i")].set_index("order")
            if b.empty:
                continue
            col = "fraction for 90 %"
            f = {o: b.loc[o, col] if o in b.index else None for o in ("oldest", "random", "drift", "ambiguity")}
            saved = None if f["oldest"] is None else (1 - f["oldest"]) * full_hours
            lines.append(f"| {reg} | {s} | {_fmt(b.iloc[0]['none'])} / {_fmt(b.iloc[0]['full'])} | "
                         + " | ".join(_fmt(None if v is None else 100 * v, 0) + (" %" if v is not None else "")
                                      for v in f.values())
                         + f" | {_fmt(saved, 0)} of {full_hours:.0f} device-hours |")
    return "\n".join(lines)


def flips_table(runs: dict) -> str:
    lines = ["| regime | strategy | t2i flips@1 reindex | no_reindex | i2t flips@1 reindex | no_reindex |",
             "|---|---|---|---|---|---|"]
    for reg in REGIMES:
        for s in STRATEGIES:
            sub = [x for x in runs.values() if _regime(x) == reg and x["strategy"] == s]
            if not sub:
                continue
            cells = []
            for d in ("t2i", "i2t"):
                for p in ("reindex", "no_reindex"):
                    cells.append(_fmt(np.mean([x["by_policy"][p]["metrics"][metric("negative_flips", d, 1)]
                                               for x in sub])))
            lines.append(f"| {reg} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def approx_table(runs: dict) -> str:
    rows = []
    for x in runs.values():
        for p in ("reindex", "no_reindex"):
            q = x["by_policy"][p]["index_quality"]
            for m in ("images", "captions"):
                for step, v in enumerate(q["per_step"][m]):
                    rows.append({"retrain": q["retrain"], "policy": p, "gallery": m, "step": step + 1, "q": v,
                                 "trainings": len(q["trainings"][m]),
                                 "train_s": sum(t["seconds"] for t in q["trainings"][m])})
    df = pd.DataFrame(rows)
    lines = ["| quantizer trained | policy | gallery | recall@10 vs exact after task 1 / 2 / 3 | trainings | "
             "training time |", "|---|---|---|---|---|---|"]
    for (rt, p, m), g in df.groupby(["retrain", "policy", "gallery"]):
        per = g.groupby("step").q.mean()
        lines.append(f"| {rt} | {p} | {m} | " + " / ".join(f"{v:.2f}" for v in per.values)
                     + f" | {g.trainings.mean():.0f} | {1000 * g.train_s.mean():.0f} ms |")
    return "\n".join(lines)


def main() -> None:
    runs = {n: r for n, r in collect(sys.argv[1]).runs.items() if r.get("status") == "complete"}
    print("## Backfill\n\n" + backfill_table(runs) + "\n\n## Negative flips\n\n" + flips_table(runs))
    if len(sys.argv) > 2:
        print("\n## Approximate index\n\n" + approx_table(collect(sys.argv[2]).runs))


if __name__ == "__main__":
    main()
