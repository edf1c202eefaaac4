"""Plain-text tables of a study's results, printed at the end of `ccr run`."""

from __future__ import annotations

from typing import Any

from ccr.results import metric, smallest_k


def _fmt(v: float | None, width: int = 5) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:{width}.1f}"


def matrix_table(title: str, m: list[list[float | None]], tasks: list[str]) -> str:
    """Rows: after learning task s; columns: evaluated task. Task names in full, never cut."""
    rows = [f"after {t}" for t in tasks]
    w = max(len(r) for r in rows)
    cw = max(5, *(len(t) for t in tasks))
    lines = [title, " " * (w + 1) + " ".join(f"{t:>{cw}}" for t in tasks)]
    for s, row in enumerate(m):
        lines.append(f"{rows[s]:<{w}} " + " ".join(_fmt(v, cw) for v in row))
    return "\n".join(lines)


def first_k(res: dict[str, Any]) -> str:
    """The smallest K measured (1 unless eval.ks says otherwise), as results.json spells it."""
    return str(smallest_k(res))


def summary_table(res: dict[str, Any]) -> str:
    k = first_k(res)
    cols = [metric(q, d, k) for d in ("i2t", "t2i") for q in ("avg_final_recall", "forgetting")]
    lines = [f"{'policy':<18} {'cost(img+cap)':>14} " + " ".join(f"{c:>19}" for c in cols) + f" {'rsum':>7}"]
    for name, r in res["by_policy"].items():
        m = r["metrics"]
        rsum = f"{m['rsum']:7.1f}" if m.get("rsum") is not None else f"{'-':>7}"
        lines.append(f"{name:<18} {m['index_cost/embedded']:>14} " + " ".join(f"{m[c]:19.1f}" for c in cols)
                     + f" {rsum}")
    return "\n".join(lines)


def anatomy_table(res: dict[str, Any]) -> str:
    a = res.get("anatomy")
    if not a:
        return ""
    n = len(res["task_order"])
    last = n - 1
    k = first_k(res)
    tw = max(4, *(len(t) for t in res["task_order"]))
    lines = [f"anatomy after the last task (t2i R@{k} by query/gallery model; drift = cosine θ_i vs θ_n):",
             f"{'task':<{tw}} {'new/old':>8} {'new/new':>8} {'old/old':>8} {'old/new':>8} "
             f"{'drift img':>9} {'drift cap':>9} {'align':>6}"]
    g = a["grid"]
    for i, t in enumerate(res["task_order"]):
        vals = [g[c]["t2i"][k][last][i] for c in ("new_q/old_g", "new_q/new_g", "old_q/old_g", "old_q/new_g")]
        lines.append(f"{t:<{tw}} " + " ".join(f"{v:8.1f}" for v in vals)
                     + f" {a['drift']['images'][last][i]:9.3f} {a['drift']['captions'][last][i]:9.3f}"
                     + f" {a['alignment'][last][i]:6.3f}")
    return "\n".join(lines)


def render(res: dict[str, Any]) -> str:
    tasks, k = res["task_order"], first_k(res)
    parts = [
        f"strategy {res['strategy']}, policy {res['policy']}, scope {res['scope']}, seed {res['seed']}",
        matrix_table(f"t2i R@{k} (row: trained up to, column: evaluated task)", res["recall"]["t2i"][k], tasks),
        matrix_table(f"i2t R@{k}", res["recall"]["i2t"][k], tasks),
        summary_table(res),
        anatomy_table(res),
    ]
    return "\n\n".join(p for p in parts if p)
