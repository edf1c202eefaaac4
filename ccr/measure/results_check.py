"""Is a results.json (any schema version) a ccr result that analysis can use? One reason when it is not: a
file that is valid JSON but not a ccr result is reported by name and skipped, never allowed to abort an
analysis."""

from __future__ import annotations

from typing import Any

from ccr.measure.results import CURVE_NUMBERS, QUANTITIES, _kind, metric, upgrade


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
    return _fields_problem(up, len(order))


def _by_k_problem(by_k: Any, n: int, vector: bool = False) -> bool:
    """True unless `by_k` is {K: matrix over n tasks} (or {K: vector of n numbers or nulls})."""
    return not isinstance(by_k, dict) or any(
        not str(k).isdigit() or (_vector_problem(m, n) if vector else _matrix_problem(m, n)) for k, m in by_k.items())


def _vector_problem(v: Any, n: int) -> bool:
    return not isinstance(v, list) or len(v) > n or any(x is not None and not _is_number(x) for x in v)


def _fields_problem(res: dict[str, Any], n: int) -> str | None:
    """Every other field that analysis reads, checked for its type (an upgraded result)."""
    for key in ("strategy", "policy", "status"):
        if key in res and not isinstance(res[key], str):
            return f"'{key}' is not a string"
    if not isinstance(res["seed"], int) or isinstance(res["seed"], bool):
        return "'seed' is not an integer"
    if "policy" in res and res["policy"] not in res["by_policy"]:
        return f"'policy' {res['policy']!r} is not one of 'by_policy'"
    if res.get("scope") not in (None, "task", "seen"):
        return "'scope' is not task or seen"
    for where, m in [("metrics", res.get("metrics", {})), *((f"policy {p!r}: metrics", pr["metrics"])
                                                            for p, pr in res["by_policy"].items())]:
        if not isinstance(m, dict) or any(v is not None and not _is_number(v) for v in m.values()):
            return f"{where} are not numbers"
    if res.get("dataset") is not None and not isinstance(res["dataset"], dict):
        return "'dataset' is not an object"
    return (_provenance_problem(res.get("provenance")) or _anatomy_problem(res.get("anatomy"), n)
            or _unlearned_problem(res, n) or _measures_problem(res, n))


def _provenance_problem(prov: Any) -> str | None:
    """provenance: where and with what a result was made."""
    if prov is not None:
        if not isinstance(prov, dict):
            return "'provenance' is not an object"
        for key, kinds in (("versions", dict), ("git", dict), ("started", (int, float)), ("finished", (int, float)),
                           ("torch_threads", int), ("host", str), ("device", str)):
            if prov.get(key) is not None and (not isinstance(prov[key], kinds) or isinstance(prov[key], bool)):
                return f"'provenance.{key}' is not {'an object' if kinds is dict else 'a ' + _kind(kinds)}"
        commit = (prov.get("git") or {}).get("commit")
        if commit is not None and not isinstance(commit, str):
            return "'provenance.git.commit' is not a string"
    return None


def _anatomy_problem(a: Any, n: int) -> str | None:
    """anatomy: grid, stability and alignment matrices over the n tasks."""
    if a is not None:
        if not isinstance(a, dict) or not {"grid", "stability", "alignment"} <= set(a):
            return "'anatomy' is not a ccr anatomy"
        if not isinstance(a["grid"], dict) or any(
                not isinstance(by_d, dict) or any(_by_k_problem(by_k, n) for by_k in by_d.values())
                for by_d in a["grid"].values()):
            return "'anatomy.grid' is not matrices of numbers"
        for key in ("stability", "stability_from_init"):
            if key in a and (not isinstance(a[key], dict) or any(_matrix_problem(m, n) for m in a[key].values())):
                return f"'anatomy.{key}' is not matrices of numbers"
        if _matrix_problem(a["alignment"], n):
            return "'anatomy.alignment' is not a matrix of numbers"
    return None


def _unlearned_problem(res: dict[str, Any], n: int) -> str | None:
    """zero_shot, transfer and control: recall measured with no policy."""
    for key, vector in (("zero_shot", True), ("transfer", False), ("control", False)):
        part = res.get(key)
        if part is None:
            continue
        if not isinstance(part, dict) or not isinstance(part.get("recall"), dict) or any(
                _by_k_problem(by_k, n + 1 + len(part.get("tasks") or []), vector) for by_k in part["recall"].values()):
            return f"'{key}' is not recall {'vectors' if vector else 'matrices'} of numbers"
        if key == "control" and (not isinstance(part.get("tasks"), list)
                                 or not all(isinstance(t, str) for t in part["tasks"])):
            return "'control.tasks' is not a list of task names"
    sets = res.get("classification")
    if sets is not None and (not isinstance(sets, dict) or any(
            not isinstance(s, dict) or _vector_problem(s.get("top1"), n + 1) for s in sets.values())):
        return "'classification' is not top-1 vectors of numbers per set"
    return None


def _measures_problem(res: dict[str, Any], n: int) -> str | None:
    """negative flips, the backfill curve, per-step costs, embedding throughput and dataset counts."""
    for p, pr in res["by_policy"].items():
        flips = pr.get("negative_flips")
        if flips is not None and (not isinstance(flips, dict)
                                  or any(_by_k_problem(by_k, n, vector=True) for by_k in flips.values())):
            return f"policy {p!r}: 'negative_flips' is not vectors of numbers"
    curve = res.get("backfill_curve")
    if curve is not None and (not isinstance(curve, list) or any(
            not isinstance(r, dict) or not all(_is_number(r.get(f)) for f in CURVE_NUMBERS)
            or not isinstance(r.get("order"), str) or not isinstance(r.get("direction"), str)
            or not 0 <= r["step"] < n for r in curve)):
        return "'backfill_curve' is not a list of {step, order, fraction, direction, k, recall} records"
    for p, pr in res["by_policy"].items():
        steps = pr["index_cost"].get("per_step")
        if steps is not None and (not isinstance(steps, list) or any(
                not isinstance(x, dict) or not all(_is_number(x.get(m)) for m in ("images", "captions"))
                for x in steps)):
            return f"policy {p!r}: 'index_cost.per_step' is not a list of embedding counts"
    emb = res.get("embedding")
    if emb is not None and (not isinstance(emb, dict) or any(
            not isinstance(emb.get(m), dict) or (emb[m].get("per_second") is not None
                                                 and not _is_number(emb[m]["per_second"]))
            for m in ("images", "captions"))):
        return "'embedding' is not a throughput per modality"
    tasks = (res.get("dataset") or {}).get("tasks") if isinstance(res.get("dataset"), dict) else None
    if tasks is not None and (not isinstance(tasks, dict) or any(
            not isinstance(v, dict) or not all(_is_number(x) for x in v.values()) for v in tasks.values())):
        return "'dataset.tasks' is not item counts per task"
    return None
