"""The results schema, in one place: metric names, results.json, flat metrics and tidy records.

Metric names are flat and readable, and the same everywhere (results.json's `metrics`, Ray Tune,
`optuna.metric` in sweep files, the printed report and `ccr analyze`):

    i2t/R@1, t2i/R@10          average recall over all tasks after the last one (%)
    forgetting/t2i/R@1         average forgetting (points: best earlier recall - final recall)
    bwt/i2t/R@5                backward transfer (final recall - recall right after learning)
    rsum                       R@1 + R@5 + R@10 of both directions, averaged over tasks after the last
    index_cost/embedded        embeddings computed for indexing over the sequence (images + captions)
    index_cost/images, index_cost/captions, index_cost/seconds
    index_cost/index_seconds   seconds of index building over the sequence (training an approximate index,
                               adding vectors), the index's share of the cost beside embedding's
    negative_flips/t2i/R@1     old tasks' queries that were hits at R@K before a model update and are misses
                               after it (%, RACT's negative flip rate), mean over updates 2..n

    zero_shot/t2i/R@1          θ0 (the model before task 1) on every task, mean over tasks
    transfer/t2i/R@1           eval.transfer: a task's mean recall before it was learned (θ0 included; ZSCL's
                               Transfer, in ccr.analysis.field, leaves θ0 out), averaged over tasks 2..n
    control/t2i/R@1            eval.control: tasks never trained, after the last task (mean over them)
    retention/t2i/R@1          that, in % of θ0's on the same control tasks
    classification/SET/top1    eval.classification: zero-shot top-1 accuracy on set SET after the last task (%)
    classification/SET/retention  that, in % of θ0's on the same set

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

from ccr.config.schema import upgrade_tree
from ccr.measure.metrics import DIRECTIONS, bwt, final_average, forgetting, rsum_matrix, to_json_matrix

SCHEMA_VERSION = 3
# version 3: the anatomy's mean cosine of an item's embeddings then and now is `stability` (it was `drift`,
# a name that read backwards: higher meant less drift)
RENAMED_ANATOMY = {"drift": "stability", "drift_from_init": "stability_from_init"}
QUANTITIES = ("avg_final_recall", "forgetting", "bwt")  # per direction and K
INITIAL = ("zero_shot", "transfer", "control", "retention")  # per direction and K, measured without a policy
COST = ("index_cost/embedded", "index_cost/images", "index_cost/captions", "index_cost/seconds",
        "index_cost/index_seconds")
BETTER = {"avg_final_recall": "max", "forgetting": "min", "bwt": "max", "rsum": "max", "index_cost": "min",
          "negative_flips": "min",
          "zero_shot": "max", "transfer": "max", "control": "max", "retention": "max", "classification": "max"}
EXPLAIN = {
    "avg_final_recall": "average recall over all tasks after the last task (%)",
    "forgetting": "average forgetting: best earlier recall of a task minus its final recall (points; lower is "
                  "better)",
    "bwt": "backward transfer: final recall of a task minus its recall right after it was learned (points)",
    "rsum": "R@1 + R@5 + R@10 of both directions, averaged over tasks after the last task",
    "index_cost": "embeddings computed for indexing over the whole sequence (images + captions)",
    "negative_flips": "queries of old tasks that were hits at R@K before a model update and are misses after it, "
                      "in % of those queries, mean over updates (RACT's negative flip rate)",
    "zero_shot": "recall of the model before the first task (θ0) on every task, mean over tasks (%)",
    "transfer": "a task's mean recall before it was learned (θ0 included), averaged over tasks 2..n "
                "(eval.transfer; ZSCL's own Transfer, in the field table, leaves θ0 out)",
    "control": "recall on control data, tasks never trained (eval.control), after the last task (%)",
    "retention": "control recall after the last task, in % of θ0's on the same control data",
    "classification": "zero-shot top-1 accuracy on a classification set (eval.classification) after the last "
                      "task (%), and that in % of θ0's (retention)",
}
_FNS = {"avg_final_recall": final_average, "forgetting": forgetting, "bwt": bwt}


def metric(quantity: str, direction: str, k: int | str) -> str:
    """The name of a per-direction metric: ('avg_final_recall', 't2i', 1) -> 't2i/R@1'; ('forgetting', 't2i',
    1) -> 'forgetting/t2i/R@1'."""
    base = f"{direction}/R@{k}"
    return base if quantity == "avg_final_recall" else f"{quantity}/{base}"


def metric_names(ks: list[int], compare: list[str] = (), val: bool = False, transfer: bool = False,
                 control: bool = False, classification: list[str] = ()) -> list[str]:
    """Every metric a study with these K (and these further policies; with val items; measuring transfer,
    control data and these classification sets) reports."""
    quality = [metric(q, d, k) for q in QUANTITIES for d in DIRECTIONS for k in ks] + ["rsum"]
    flips = [metric("negative_flips", d, k) for d in DIRECTIONS for k in ks]
    own = quality + flips + list(COST) + ([f"val/{m}" for m in quality] if val else [])
    initial = [f"{q}/{d}/R@{k}" for q in ("zero_shot", *(("transfer",) if transfer else ()),
                                           *(("control", "retention") if control else ()))
               for d in DIRECTIONS for k in ks]
    sets = [f"classification/{s}/{m}" for s in classification for m in ("top1", "retention")]
    return own + initial + sets + [f"{p}/{m}" for p in compare for m in own]


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
                   val: dict[str, dict[int, np.ndarray]] | None = None,
                   flips: dict[str, dict[int, np.ndarray]] | None = None) -> dict[str, float]:
    """Flat metrics of one policy from its recall matrices {direction: {K: (n, n)}}, its cost, its
    matrices on val items (prefixed `val/`) and its negative flips per step {direction: {K: (n,)}}."""
    out = _quality(mats)
    if val:
        out.update({f"val/{m}": v for m, v in _quality(val).items()})
    for d, by_k in (flips or {}).items():
        for k, v in by_k.items():
            mean = _mean(v)
            if mean is not None:  # one task: no update, no flip
                out[metric("negative_flips", d, k)] = mean
    out.update({"index_cost/embedded": cost["images_embedded"] + cost["captions_embedded"],
                "index_cost/images": cost["images_embedded"], "index_cost/captions": cost["captions_embedded"],
                "index_cost/seconds": cost["seconds"], "index_cost/index_seconds": cost.get("index_seconds", 0.0)})
    return out


def policy_results(mats: dict[str, dict[int, np.ndarray]], cost: dict[str, Any],
                   quality: dict[str, Any] | None, val: dict[str, dict[int, np.ndarray]] | None = None,
                   flips: dict[str, dict[int, np.ndarray]] | None = None) -> dict[str, Any]:
    """One policy's part of results.json: matrices (test, and val where measured), flat metrics, cost
    detail, approximate-search quality, negative flips per step (None at step 1: no update before it)."""
    out = {
        "recall": {d: {str(k): to_json_matrix(m) for k, m in by_k.items()} for d, by_k in mats.items()},
        "rsum_matrix": to_json_matrix(rsum_matrix(mats)),
        "metrics": policy_metrics(mats, cost, val, flips),
        "index_cost": cost,
        "index_quality": quality,
    }
    if val:
        out["val_recall"] = {d: {str(k): to_json_matrix(m) for k, m in by_k.items()} for d, by_k in val.items()}
    if flips:
        out["negative_flips"] = {d: {str(k): _vector(v) for k, v in by_k.items()} for d, by_k in flips.items()}
    return out


def _mean(values) -> float | None:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


def _vector(v: np.ndarray) -> list[float | None]:
    return [None if np.isnan(x) else float(x) for x in v]


def initial_results(zero_shot: dict | None, transfer: dict | None, control: dict | None, control_tasks: list[str],
                    upto: int, scope: str) -> dict[str, Any]:
    """The evaluations that need no index policy: θ0's zero-shot row, transfer (tasks before they are
    learned) and control data (tasks never learned), for results.json, with their metrics:
    {"zero_shot": ..., "transfer": ..., "control": ..., "metrics": {name: value}}."""
    out: dict[str, Any] = {"zero_shot": None, "transfer": None, "control": None, "metrics": {}}
    m = out["metrics"]
    if zero_shot:
        test = zero_shot["test"]
        out["zero_shot"] = {"gallery": scope, "recall": {d: {str(k): _vector(v) for k, v in by_k.items()}
                                                         for d, by_k in test.items()}}
        if "val" in zero_shot:
            out["zero_shot"]["val_recall"] = {d: {str(k): _vector(v) for k, v in by_k.items()}
                                              for d, by_k in zero_shot["val"].items()}
        for d, by_k in test.items():
            for k, v in by_k.items():
                m[f"zero_shot/{d}/R@{k}"] = _mean(v)
    if transfer is not None and zero_shot:
        out["transfer"] = {"recall": {d: {str(k): to_json_matrix(a[:upto]) for k, a in by_k.items()}
                                      for d, by_k in transfer.items()}}
        for d, by_k in transfer.items():
            for k, a in by_k.items():
                n = a.shape[1]
                per_task = [_mean([zero_shot["test"][d][k][i], *a[:min(i, upto), i]]) for i in range(1, n)]
                value = _mean([v for v in per_task if v is not None])
                if value is not None:
                    m[f"transfer/{d}/R@{k}"] = value
    if control is not None:
        out["control"] = {"tasks": list(control_tasks), "gallery": scope,
                          "recall": {d: {str(k): to_json_matrix(a[:upto + 1]) for k, a in by_k.items()}
                                     for d, by_k in control.items()}}
        for d, by_k in control.items():
            for k, a in by_k.items():
                first, last = _mean(a[0]), _mean(a[upto])
                if last is not None:
                    m[f"control/{d}/R@{k}"] = last
                if first and last is not None:
                    m[f"retention/{d}/R@{k}"] = 100.0 * last / first
    m = {k: v for k, v in m.items() if v is not None}
    out["metrics"] = m
    return out


def study_results(main_policy: str, by_policy: dict[str, dict[str, Any]], initial: dict[str, Any] | None = None,
                  **fields: Any) -> dict[str, Any]:
    """results.json: the study's fields, its own policy's results at the top level (its `metrics` joined by
    those that need no policy: zero_shot/..., transfer/..., control/..., classification/...), and every
    policy's."""
    initial = initial or {"metrics": {}}
    main = by_policy[main_policy]
    return {"schema_version": SCHEMA_VERSION, **fields,
            **{k: initial.get(k) for k in ("zero_shot", "transfer", "control", "classification")},
            **main, "metrics": {**main["metrics"], **initial["metrics"]}, "by_policy": by_policy}


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
                    "index_cost/seconds": c.get("seconds", 0.0),
                    "index_cost/index_seconds": c.get("index_seconds", 0.0)})
    return out


def upgrade(res: dict[str, Any]) -> dict[str, Any]:
    """Results of any schema version as the current one, their config under today's key names (a new dict;
    files are not rewritten)."""
    res = _config_upgraded(res)
    version = res.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return res
    if version not in (1, 2):
        raise ValueError(f"results schema_version {version!r} is newer than this ccr reads ({SCHEMA_VERSION})"
                         if isinstance(version, int) and version > SCHEMA_VERSION else
                         f"results schema_version {version!r} is not one this ccr reads (1 to {SCHEMA_VERSION})")
    out = _v1_to_v2(res) if version == 1 else dict(res)
    a = out.get("anatomy")
    if isinstance(a, dict):
        out["anatomy"] = {RENAMED_ANATOMY.get(k, k): v for k, v in a.items()}
    out["schema_version"] = SCHEMA_VERSION
    return out


def _config_upgraded(res: dict[str, Any]) -> dict[str, Any]:
    """`res` with its config's renamed keys under their new names (ccr.config.schema.RENAMED), so that results
    written before and after a rename compare as the same study and analyse in the same columns."""
    cfg = res.get("config")
    if not isinstance(cfg, dict):
        return res
    try:
        new = upgrade_tree(cfg)
    except ValueError:  # both names with different values: a crafted file; its config is left as written
        return res
    return res if new == cfg else {**res, "config": new}


def _v1_to_v2(res: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept each policy's metrics under `summary` and its rsum matrix under `rsum`."""
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
    return out


CURVE_NUMBERS = ("step", "fraction", "k", "recall", "images", "captions")


def _kind(kinds: Any) -> str:
    return {str: "string", int: "whole number"}.get(kinds, "number")


def smallest_k(res: dict[str, Any]) -> int:
    """The smallest K measured (1 unless eval.ks says otherwise)."""
    return min(int(k) for k in res["recall"]["t2i"])


# ---- tidy records --------------------------------------------------------------------------------
def summary_records(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per (policy, direction, K): recall, forgetting, bwt, plus the policy's rsum and cost."""
    res = upgrade(res)
    study = res.get("metrics") or {}  # zero_shot/..., transfer/..., control/..., retention/...: no policy's own
    for policy, pr in res["by_policy"].items():
        m = pr["metrics"]
        for d, by_k in pr["recall"].items():
            for k in by_k:
                yield {"policy": policy, "direction": d, "k": int(k),
                       **{q: m[metric(q, d, k)] for q in QUANTITIES},
                       "rsum": m.get("rsum"), "index_cost": m["index_cost/embedded"],
                       "negative_flips": m.get(metric("negative_flips", d, k)),
                       **{q: study.get(f"{q}/{d}/R@{k}") for q in INITIAL}}


def matrix_records(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per defined cell of every matrix: recall per policy, and the anatomy (policy 'anatomy',
    metric 'grid:<combination>', 'stability', 'stability_from_init' or 'alignment') where present."""
    res = upgrade(res)
    order = res["task_order"]

    def cells(m, first: int = 0, **row):
        for s, r in enumerate(m, first):
            for i, v in enumerate(r):
                if v is not None:
                    yield {**row, "step": s, "task": order[i], "task_index": i, "value": v}

    for policy, pr in res["by_policy"].items():
        for d, by_k in pr["recall"].items():
            for k, m in by_k.items():
                yield from cells(m, policy=policy, direction=d, k=int(k), metric="recall")
    zs = res.get("zero_shot")
    if isinstance(zs, dict):  # θ0's row: step -1, before the first task
        for d, by_k in zs["recall"].items():
            for k, v in by_k.items():
                yield from cells([v], -1, policy="zero_shot", direction=d, k=int(k), metric="zero_shot")
    tr = res.get("transfer")
    if isinstance(tr, dict):
        for d, by_k in tr["recall"].items():
            for k, m in by_k.items():
                yield from cells(m, policy="transfer", direction=d, k=int(k), metric="transfer")
    ctl = res.get("control")
    if isinstance(ctl, dict):  # row 0 is θ0 (step -1); column j is control task j
        for d, by_k in ctl["recall"].items():
            for k, m in by_k.items():
                for row, r in enumerate(m):
                    for j, v in enumerate(r):
                        if v is not None:
                            yield {"policy": "control", "direction": d, "k": int(k), "metric": "control",
                                   "step": row - 1, "task": ctl["tasks"][j], "task_index": j, "value": v}
    a = res.get("anatomy")
    if a:
        for combo, by_d in a["grid"].items():
            for d, by_k in by_d.items():
                for k, m in by_k.items():
                    yield from cells(m, policy="anatomy", direction=d, k=int(k), metric=f"grid:{combo}")
        for mod, m in a["stability"].items():
            yield from cells(m, policy="anatomy", direction=mod, k=None, metric="stability")
        for mod, m in (a.get("stability_from_init") or {}).items():
            yield from cells(m, policy="anatomy", direction=mod, k=None, metric="stability_from_init")
        yield from cells(a["alignment"], policy="anatomy", direction=None, k=None, metric="alignment")
