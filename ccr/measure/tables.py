"""Plain-text tables of a study's results, printed at the end of `ccr run`."""

from __future__ import annotations

from typing import Any

from ccr.measure.metrics import chance_recall
from ccr.measure.results import metric, smallest_k


def _fmt(v: float | None, width: int = 5, decimals: int = 1) -> str:
    """A number as the tables print it; None as '-'. Rounded first, + 0.0: never "-0.0"."""
    return f"{'-':>{width}}" if v is None else f"{round(v, decimals) + 0.0:{width}.{decimals}f}"


def class_counts(res: dict[str, Any]) -> dict[str, int]:
    """The classification tasks of a run (data.kind=imagefolder, alone or in a sequence) and their class counts."""
    ds = res.get("dataset") or {}
    if ds.get("kind") == "imagefolder" and isinstance(ds.get("classes"), int):
        return {ds.get("name"): ds["classes"]}
    return {t: v["classes"] for t, v in (ds.get("datasets") or {}).items()
            if isinstance(v, dict) and isinstance(v.get("classes"), int)}


def chance_row(res: dict[str, Any], direction: str, k: int | str, tasks: list[str] | None = None) -> list[float]:
    """What a random ranking scores, per evaluated task: in its own gallery (task scope), or in the gallery of
    every task of the sequence (seen scope, after the last task); a classification task's: a random class order
    among its own classes."""
    tasks = tasks or res["task_order"]
    classes = class_counts(res)
    if classes:
        plain = chance_row({**res, "dataset": {**res["dataset"], "kind": None, "datasets": None}}, direction, k, tasks)
        return [chance_recall(int(k), classes[t]) if t in classes else c for t, c in zip(tasks, plain, strict=True)]
    counts = {t: int(v.get("test", 0)) for t, v in ((res.get("dataset") or {}).get("tasks") or {}).items()}
    first = ((res.get("index_cost") or {}).get("per_step") or [{}])[0]
    per_image = first["captions"] / first["images"] if first.get("images") else 1.0
    if res.get("scope") == "seen":
        counts = {t: sum(counts.get(x, 0) for x in res["task_order"]) for t in tasks}
    if direction == "t2i":
        return [chance_recall(int(k), counts.get(t, 0)) for t in tasks]
    return [chance_recall(int(k), round(counts.get(t, 0) * per_image), per_image) for t in tasks]


def trivial_ks(res: dict[str, Any]) -> list[int]:
    """The Ks at which some task's gallery is so small that R@K is 100 % whatever the model (K >= its size)."""
    return sorted(int(k) for k in res["recall"]["t2i"]
                  if any(c >= 100.0 for d in ("t2i", "i2t") for c in chance_row(res, d, k)))


def matrix_table(title: str, m: list[list[float | None]], tasks: list[str],
                 first: list[float | None] | None = None, rows: list[str] | None = None,
                 chance: list[float] | None = None) -> str:
    """Rows: after learning task s (and `first`, θ0's zero-shot row, above them; `chance`, a random ranking's,
    below); columns: evaluated task. Task names in full, never cut."""
    labels = (["θ0 (zero-shot)"] if first is not None else []) + (rows or [f"after {t}" for t in tasks])
    body = ([first] if first is not None else []) + list(m)
    if chance is not None:
        labels, body = [*labels, "chance"], [*body, chance]
    w = max(len(r) for r in labels)
    cw = max(5, *(len(t) for t in tasks))
    lines = [title, " " * (w + 1) + " ".join(f"{t:>{cw}}" for t in tasks)]
    for label, row in zip(labels, body, strict=False):
        lines.append(f"{label:<{w}} " + " ".join(_fmt(v, cw) for v in row))
    return "\n".join(lines)


def initial_table(res: dict[str, Any]) -> str:
    """Transfer (tasks before they were learned) and control data (never learned), where measured."""
    k, tasks, out = first_k(res), res["task_order"], []
    m = res.get("metrics", {})
    if res.get("transfer"):
        out.append(matrix_table(f"t2i R@{k} of tasks not learned yet (transfer; row: trained up to)",
                                res["transfer"]["recall"]["t2i"][k], tasks))
    ctl = res.get("control")
    if ctl:
        out.append(matrix_table(f"t2i R@{k} on control data (never trained)", ctl["recall"]["t2i"][k][1:], ctl["tasks"],
                                first=ctl["recall"]["t2i"][k][0], rows=[f"after {t}" for t in tasks]))
    names = [f"{q}/{d}/R@{k}" for q in ("zero_shot", "transfer", "control", "retention") for d in ("i2t", "t2i")]
    have = [(n, m[n]) for n in names if n in m]
    if have:
        out.append("  ".join(f"{n} {_fmt(v, 0)}" for n, v in have))
    sets = res.get("classification") or {}
    if sets:  # eval.classification: top-1 at θ0, then after each task
        out.append("\n".join(["zero-shot classification top-1 (θ0, then after each task):"] + [
            f"  {name:<16} " + " -> ".join(_fmt(v, 0) for v in s["top1"]) for name, s in sets.items()]))
    return "\n\n".join(out)


def first_k(res: dict[str, Any]) -> str:
    """The smallest K measured (1 unless eval.ks says otherwise), as results.json spells it."""
    return str(smallest_k(res))


def summary_table(res: dict[str, Any]) -> str:
    k = first_k(res)
    cols = [metric(q, d, k) for d in ("i2t", "t2i") for q in ("avg_final_recall", "forgetting")]
    trivial = trivial_ks(res)
    flips = metric("negative_flips", "t2i", k)
    lines = [f"{'policy':<18} {'cost(img+cap)':>14} " + " ".join(f"{c:>19}" for c in cols) + f" {'rsum':>7}"
             + f" {flips:>23}"]
    one_task = len(res["task_order"]) == 1  # forgetting (and a flip) needs a task after the one forgotten
    for name, r in res["by_policy"].items():
        m = r["metrics"]
        rsum = _fmt(m.get("rsum"), 7)
        flip = _fmt(m.get(flips), 23)
        lines.append(f"{name:<18} {m['index_cost/embedded']:>14} "
                     + " ".join(f"{'-':>19}" if one_task and c.startswith("forgetting") else _fmt(m[c], 19)
                                for c in cols)
                     + f" {rsum} {flip}")
    if trivial:  # the rsum sums R@1, R@5 and R@10 of both directions
        lines.append(f"* R@{', R@'.join(map(str, trivial))}: K is at least the size of a task's gallery "
                     f"({_smallest(res)}), so that recall is 100 % whatever the model, and rsum counts it")
        lines[0] = lines[0].replace(f"{'rsum':>7}", f"{'rsum*':>7}")
    return "\n".join(lines)


def _smallest(res: dict[str, Any]) -> str:
    counts = {t: int(v.get("test", 0)) for t, v in ((res.get("dataset") or {}).get("tasks") or {}).items()
              if t in res["task_order"]}
    t = min(counts, key=counts.get)
    return f"{counts[t]} test images in {t}"


def anatomy_table(res: dict[str, Any]) -> str:
    a = res.get("anatomy")
    if not a:
        return ""
    n = len(res["task_order"])
    last = n - 1
    k = first_k(res)
    tw = max(4, *(len(t) for t in res["task_order"]))
    scope = a.get("scope", "task")
    other = f"; the recall matrix above is in {res['scope']} scope" if res.get("scope") != scope else ""
    lines = [f"anatomy after the last task (t2i R@{k} by query/gallery model, {scope} scope: each task in its own "
             f"gallery{other}; stability = cosine θ_i vs θ_n, 1 = no drift"
             + (", since θ0 in parentheses" if a.get("stability_from_init") else "") + "):",
             f"{'task':<{tw}} {'new/old':>8} {'new/new':>8} {'old/old':>8} {'old/new':>8} "
             f"{'stab img':>9} {'stab cap':>9} {'align':>6}"]
    g = a["grid"]
    for i, t in enumerate(res["task_order"]):
        vals = [g[c]["t2i"][k][last][i] for c in ("new_q/old_g", "new_q/new_g", "old_q/old_g", "old_q/new_g")]
        d0 = a.get("stability_from_init")
        stab = a["stability"]
        lines.append(f"{t:<{tw}} " + " ".join(_fmt(v, 8) for v in vals)
                     + f" {_fmt(stab['images'][last][i], 9, 3)} {_fmt(stab['captions'][last][i], 9, 3)}"
                     + f" {_fmt(a['alignment'][last][i], 6, 3)}"
                     + (f"  ({_fmt(d0['images'][last][i], 0, 3)} / {_fmt(d0['captions'][last][i], 0, 3)})"
                        if d0 else ""))
    return "\n".join(lines)


def render(res: dict[str, Any]) -> str:
    tasks, k = res["task_order"], first_k(res)
    zs = (res.get("zero_shot") or {}).get("recall")
    parts = [
        f"strategy {res['strategy']}, policy {res['policy']}, scope {res['scope']}, seed {res['seed']}",
        matrix_table(f"t2i R@{k} (row: trained up to, column: evaluated task)", res["recall"]["t2i"][k], tasks,
                     first=zs["t2i"][k] if zs else None, chance=chance_row(res, "t2i", k)),
        matrix_table(f"i2t R@{k}", res["recall"]["i2t"][k], tasks, first=zs["i2t"][k] if zs else None,
                     chance=chance_row(res, "i2t", k)),
        initial_table(res),
        summary_table(res),
        anatomy_table(res),
    ]
    return "\n\n".join(p for p in parts if p)
