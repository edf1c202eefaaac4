"""The results schema, in one place: metric names, results.json, flat metrics and tidy records.

Metric names are flat and readable, and the same everywhere (results.json's `metrics`, Ray Tune,
`optuna.metric` in sweep files, the printed report and `ccr analyze`):

    i2t/R@1, t2i/R@10          average recall over all tasks after the last one (%)
    forgetting/t2i/R@1         average forgetting (points: best earlier recall - final recall)
    bwt/i2t/R@5                backward transfer (final recall - recall right after learning)
    rsum                       R@1 + R@5 + R@10 of both directions, averaged over tasks after the last
    index_cost/embedded        embeddings computed for indexing over the sequence (images + captions)
    index_cost/images, index_cost/captions, index_cost/seconds

A policy other than the study's own (`index.compare`) prefixes its name: `no_reindex/t2i/R@1`.
The same recall matrix on val items (where the dataset has them, `eval.val`), the one that selection
and HPO may read, prefixes `val/`: `val/t2i/R@1`, `val/forgetting/t2i/R@1`, `no_reindex/val/rsum`.

results.json carries `schema_version`; `upgrade` reads every older version, so analysis reads results
written by any ccr release.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ccr.metrics import DIRECTIONS, bwt, final_average, forgetting, rsum_matrix, to_json_matrix

SCHEMA_VERSION = 2
QUANTITIES = ("avg_final_recall", "forgetting", "bwt")  # per direction and K
COST = ("index_cost/embedded", "index_cost/images", "index_cost/captions", "index_cost/seconds")
BETTER = {"avg_final_recall": "max", "forgetting": "min", "bwt": "max", "rsum": "max", "index_cost": "min"}
EXPLAIN = {
    "avg_final_recall": "average recall over all tasks after the last task (%)",
    "forgetting": "average forgetting: best earlier recall of a task minus its final recall (points; lower is "
                  "better)",
    "bwt": "backward transfer: final recall of a task minus its recall right after it was learned (points)",
    "rsum": "R@1 + R@5 + R@10 of both directions, averaged over tasks after the last task",
    "index_cost": "embeddings computed for indexing over the whole sequence (images + captions)",
}
_FNS = {"avg_final_recall": final_average, "forgetting": forgetting, "bwt": bwt}


def metric(quantity: str, direction: str, k: int | str) -> str:
    """The name of a per-direction metric: ('avg_final_recall', 't2i', 1) -> 't2i/R@1'; ('forgetting', 't2i',
    1) -> 'forgetting/t2i/R@1'."""
    base = f"{direction}/R@{k}"
    return base if quantity == "avg_final_recall" else f"{quantity}/{base}"


def metric_names(ks: list[int], compare: list[str] = (), val: bool = False) -> list[str]:
    """Every metric a study with these K (and these further policies; with val items) reports."""
    quality = [metric(q, d, k) for q in QUANTITIES for d in DIRECTIONS for k in ks] + ["rsum"]
    own = quality + list(COST) + ([f"val/{m}" for m in quality] if val else [])
    return own + [f"{p}/{m}" for p in compare for m in own]


def _quality(mats: dict[str, dict[int, np.ndarray]]) -> dict[str, float]:
    out: dict[str, float] = {}
    n = next(iter(next(iter(mats.values())).values())).shape[0] if mats else 0
    if n:
        for q, fn in _FNS.items():
            for d, by_k in mats.items():
                for k, m in by_k.items():
                    out[metric(q, d, k)] = fn(m)
        out["rsum"] = final_average(rsum_matrix(mats))
    return out


def policy_metrics(mats: dict[str, dict[int, np.ndarray]], cost: dict[str, Any],
                   val: dict[str, dict[int, np.ndarray]] | None = None) -> dict[str, float]:
    """Flat metrics of one policy from its recall matrices {direction: {K: (n, n)}}, its cost, and its
    matrices on val items (prefixed `val/`)."""
    out = _quality(mats)
    if val:
        out.update({f"val/{m}": v for m, v in _quality(val).items()})
    out.update({"index_cost/embedded": cost["images_embedded"] + cost["captions_embedded"],
                "index_cost/images": cost["images_embedded"], "index_cost/captions": cost["captions_embedded"],
                "index_cost/seconds": cost["seconds"]})
    return out


def policy_results(mats: dict[str, dict[int, np.ndarray]], cost: dict[str, Any],
                   quality: dict[str, Any] | None, val: dict[str, dict[int, np.ndarray]] | None = None
                   ) -> dict[str, Any]:
    """One policy's part of results.json: matrices (test, and val where measured), flat metrics, cost
    detail, approximate-search quality."""
    out = {
        "recall": {d: {str(k): to_json_matrix(m) for k, m in by_k.items()} for d, by_k in mats.items()},
        "rsum_matrix": to_json_matrix(rsum_matrix(mats)),
        "metrics": policy_metrics(mats, cost, val),
        "index_cost": cost,
        "index_quality": quality,
    }
    if val:
        out["val_recall"] = {d: {str(k): to_json_matrix(m) for k, m in by_k.items()} for d, by_k in val.items()}
    return out


def study_results(main_policy: str, by_policy: dict[str, dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """results.json: the study's fields, its own policy's results at the top level, and every policy's."""
    return {"schema_version": SCHEMA_VERSION, **fields, **by_policy[main_policy], "by_policy": by_policy}


def flat_metrics(res: dict[str, Any]) -> dict[str, float]:
    """What a sweep trial reports (Tune's metrics): the study's own policy unprefixed, the others prefixed."""
    res = upgrade(res)
    out = dict(res["metrics"])
    for p, pr in res["by_policy"].items():
        if p != res["policy"]:
            out.update({f"{p}/{m}": v for m, v in pr["metrics"].items()})
    return out


# ---- reading ------------------------------------------------------------------------------------
def _v1_metrics(pr: dict[str, Any]) -> dict[str, float]:
    """Schema 1 (no schema_version): nested `summary` {quantity: {direction: {K: v}}}, `rsum.avg_final`."""
    out = {metric(q, d, k): v for q, by_d in pr.get("summary", {}).items() if q in QUANTITIES
           for d, by_k in by_d.items() for k, v in by_k.items()}
    if isinstance(pr.get("rsum"), dict) and pr["rsum"].get("avg_final") is not None:
        out["rsum"] = pr["rsum"]["avg_final"]
    c = pr.get("index_cost", {})
    if isinstance(c, dict) and "images_embedded" in c:
        out.update({"index_cost/embedded": c["images_embedded"] + c.get("captions_embedded", 0),
                    "index_cost/images": c["images_embedded"], "index_cost/captions": c.get("captions_embedded", 0),
                    "index_cost/seconds": c.get("seconds", 0.0)})
    return out


def upgrade(res: dict[str, Any]) -> dict[str, Any]:
    """Results of any schema version as the current one (a new dict; files are not rewritten)."""
    version = res.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return res
    if version != 1:
        raise ValueError(f"results schema_version {version!r} is newer than this ccr reads ({SCHEMA_VERSION})")
    out = {k: v for k, v in res.items() if k not in ("summary", "rsum")}
    out["by_policy"] = {}
    for p, pr in res.get("by_policy", {}).items():
        if not isinstance(pr, dict):
            out["by_policy"][p] = pr
            continue
        new = {k: v for k, v in pr.items() if k not in ("summary", "rsum")}
        if "summary" in pr:
            new["metrics"] = _v1_metrics(pr)
        if isinstance(pr.get("rsum"), dict) and "matrix" in pr["rsum"]:
            new["rsum_matrix"] = pr["rsum"]["matrix"]
        out["by_policy"][p] = new
    main = out["by_policy"].get(res.get("policy"))
    if isinstance(main, dict) and "metrics" in main:
        out["metrics"] = main["metrics"]
    out["schema_version"] = SCHEMA_VERSION
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matrix_problem(m: Any, n: int) -> bool:
    """True unless `m` is a list of rows (at most n) of numbers or nulls (at most n each)."""
    return (not isinstance(m, list) or len(m) > n
            or any(not isinstance(r, list) or len(r) > n or any(v is not None and not _is_number(v) for v in r)
                   for r in m))


def problem(res: Any) -> str | None:
    """Why `res` (as read from a results.json, any schema version) is not a ccr result that analysis can
    use; None when it is. A file that is valid JSON but not a ccr result is reported by name and skipped,
    never allowed to abort an analysis."""
    if not isinstance(res, dict):
        return "not a JSON object"
    for key in ("config", "task_order", "recall", "by_policy", "seed"):
        if key not in res:
            return f"no '{key}'"
    if not isinstance(res["config"], dict):
        return "'config' is not an object"
    order = res["task_order"]
    if not isinstance(order, list) or not order or not all(isinstance(t, str) for t in order):
        return "'task_order' is not a list of task names"
    if not isinstance(res["by_policy"], dict) or not res["by_policy"]:
        return "'by_policy' is empty or not an object"
    for p, pr in res["by_policy"].items():
        if not isinstance(pr, dict):
            return f"policy {p!r} is {type(pr).__name__}, not an object"
        if res.get("schema_version", 1) == 1 and not isinstance(pr.get("summary"), dict):
            return f"policy {p!r} has no 'summary'"
        for part in ("recall", "index_cost"):
            if not isinstance(pr.get(part), dict):
                return f"policy {p!r} has no '{part}'"
        for d, by_k in pr["recall"].items():
            if not isinstance(by_k, dict):
                return f"policy {p!r}: recall {d!r} is not an object"
            for k, m in by_k.items():
                if not str(k).isdigit() or _matrix_problem(m, len(order)):
                    return f"policy {p!r}: recall {d}@{k} is not a matrix of numbers over the {len(order)} tasks"
        if not all(_is_number(pr["index_cost"].get(c)) for c in ("images_embedded", "captions_embedded")):
            return f"policy {p!r}: index_cost is incomplete"
    try:
        up = upgrade(res)
    except ValueError as e:
        return str(e)
    for p, pr in up["by_policy"].items():
        m = pr.get("metrics")
        if not isinstance(m, dict):
            return f"policy {p!r} has no 'metrics'"
        for d, by_k in pr["recall"].items():
            for k in by_k:
                if not all(_is_number(m.get(metric(q, d, k))) for q in QUANTITIES):
                    return f"policy {p!r}: metrics {d}@{k} are incomplete or not numeric"
    a = res.get("anatomy")
    if a is not None and (not isinstance(a, dict) or not {"grid", "drift", "alignment"} <= set(a)):
        return "'anatomy' is not a ccr anatomy"
    return None


def smallest_k(res: dict[str, Any]) -> int:
    """The smallest K measured (1 unless eval.ks says otherwise)."""
    return min(int(k) for k in res["recall"]["t2i"])


# ---- tidy records --------------------------------------------------------------------------------
def summary_records(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per (policy, direction, K): recall, forgetting, bwt, plus the policy's rsum and cost."""
    res = upgrade(res)
    for policy, pr in res["by_policy"].items():
        m = pr["metrics"]
        for d, by_k in pr["recall"].items():
            for k in by_k:
                yield {"policy": policy, "direction": d, "k": int(k),
                       **{q: m[metric(q, d, k)] for q in QUANTITIES},
                       "rsum": m.get("rsum"), "index_cost": m["index_cost/embedded"]}


def matrix_records(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per defined cell of every matrix: recall per policy, and the anatomy (policy 'anatomy',
    metric 'grid:<combination>', 'drift' or 'alignment') where present."""
    res = upgrade(res)
    order = res["task_order"]

    def cells(m, **row):
        for s, r in enumerate(m):
            for i, v in enumerate(r):
                if v is not None:
                    yield {**row, "step": s, "task": order[i], "task_index": i, "value": v}

    for policy, pr in res["by_policy"].items():
        for d, by_k in pr["recall"].items():
            for k, m in by_k.items():
                yield from cells(m, policy=policy, direction=d, k=int(k), metric="recall")
    a = res.get("anatomy")
    if a:
        for combo, by_d in a["grid"].items():
            for d, by_k in by_d.items():
                for k, m in by_k.items():
                    yield from cells(m, policy="anatomy", direction=d, k=int(k), metric=f"grid:{combo}")
        for mod, m in a["drift"].items():
            yield from cells(m, policy="anatomy", direction=mod, k=None, metric="drift")
        yield from cells(a["alignment"], policy="anatomy", direction=None, k=None, metric="alignment")
