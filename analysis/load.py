"""Find ccr results under a folder and turn them into one tidy table.

One row per (run, policy, trained-up-to step, evaluated task, direction, K, metric). Corrupt result
files are reported by name and skipped; runs still going (or that left no results) are listed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ccr.storage import Storage

log = logging.getLogger(__name__)
ID_COLUMNS = ["run", "strategy", "policy", "task_order", "seed", "scope"]


@dataclass
class Collected:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name -> results
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    incomplete: list[str] = field(default_factory=list)  # running or stopped before the last task
    missing: list[str] = field(default_factory=list)  # a run folder (config.yaml) with no results.json
    failed: list[tuple[str, str]] = field(default_factory=list)  # sweep trials recorded as failed


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matrix_problem(m: Any, n: int) -> bool:
    """True unless `m` is a list of rows (at most n) of numbers or nulls (at most n each)."""
    return (not isinstance(m, list) or len(m) > n
            or any(not isinstance(r, list) or len(r) > n or any(v is not None and not _is_number(v) for v in r)
                   for r in m))


def _valid(res: Any) -> str | None:
    """Why `res` is not a ccr result that analysis can use (None when it is): a file that is valid JSON
    but not a ccr result is reported by name and skipped, never allowed to abort the analysis."""
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
        for part in ("recall", "summary", "index_cost"):
            if not isinstance(pr.get(part), dict):
                return f"policy {p!r} has no '{part}'"
        for d, by_k in pr["recall"].items():
            if not isinstance(by_k, dict):
                return f"policy {p!r}: recall {d!r} is not an object"
            for k, m in by_k.items():
                if not str(k).isdigit() or _matrix_problem(m, len(order)):
                    return f"policy {p!r}: recall {d}@{k} is not a matrix of numbers over the {len(order)} tasks"
        summ = pr["summary"]
        for d, by_k in (summ.get("avg_final_recall") or {}).items():
            for k in by_k:
                if not all(_is_number((summ.get(q) or {}).get(d, {}).get(k))
                           for q in ("avg_final_recall", "forgetting", "bwt")):
                    return f"policy {p!r}: summary {d}@{k} is incomplete or not numeric"
        if not all(_is_number(pr["index_cost"].get(c)) for c in ("images_embedded", "captions_embedded")):
            return f"policy {p!r}: index_cost is incomplete"
    a = res.get("anatomy")
    if a is not None and (not isinstance(a, dict) or not {"grid", "drift", "alignment"} <= set(a)):
        return "'anatomy' is not a ccr anatomy"
    return None


def collect(root: str | Path | Storage) -> Collected:
    """Every ccr result below `root`: a local folder or a storage URI (s3://..., see ccr.storage)."""
    store = Storage(root)
    c = Collected()
    if not store.exists():
        raise FileNotFoundError(f"no such folder: {store.display()}")
    files = [f for f in store.files() if "analysis" not in f.split("/")[:-1]]
    have = set(files)
    for rel in files:
        folder, _, base = rel.rpartition("/")
        if base == "results.json":
            name = folder or Path(store.root).name
            path = store.display(rel)
            try:
                res = json.loads(store.read_bytes(rel))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                c.corrupt.append((path, f"unreadable JSON: {e}"))
                log.warning("skipping corrupt results file %s: %s", path, e)
                continue
            why = _valid(res)
            if why:
                c.corrupt.append((path, why))
                log.warning("skipping results file %s: %s", path, why)
                continue
            if res.get("status") != "complete":
                c.incomplete.append(name)
            c.runs[name] = res
        elif base == "config.yaml" and _join(folder, "results.json") not in have:
            c.missing.append(folder)
        elif base == "error.txt" and _join(folder, "trial.json") in have:  # a failed `ccr sweep` trial
            c.failed.append((folder, store.read_text(rel)[-500:]))
    return c


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def swept_keys(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between runs (besides seed, task order and resource keys).

    A key absent from some runs (written by an older ccr) counts only by the values present.
    """
    flat = [_flatten(r["config"]) for r in runs.values()]
    keys = sorted(set().union(*flat)) if flat else []
    skip = {"seed", "tasks.order", "train.threads", "eval.batch_size", "train.max_failures"}
    return [k for k in keys if k not in skip
            and len({json.dumps(f[k], default=str) for f in flat if k in f}) > 1]


def run_info(name: str, res: dict[str, Any], swept: list[str]) -> dict[str, Any]:
    flat = _flatten(res["config"])
    info = {"run": name, "strategy": res.get("strategy"), "task_order": ">".join(res["task_order"]),
            "seed": res["seed"], "scope": res.get("scope"), "complete": res.get("status") == "complete"}
    info.update({f"cfg.{k}": flat.get(k) for k in swept if k not in ("strategy.name",)})
    return info


def tidy(c: Collected) -> pd.DataFrame:
    """The long table: recall per policy, and the anatomy (policy 'anatomy:*') where present."""
    swept = swept_keys(c.runs)
    rows = []
    for name, res in c.runs.items():
        info = run_info(name, res, swept)
        order = res["task_order"]
        for policy, pr in res["by_policy"].items():
            for d, by_k in pr["recall"].items():
                for k, m in by_k.items():
                    for s, row in enumerate(m):
                        for i, v in enumerate(row):
                            if v is not None:
                                rows.append({**info, "policy": policy, "step": s, "task": order[i], "task_index": i,
                                             "direction": d, "k": int(k), "metric": "recall", "value": v})
        a = res.get("anatomy")
        if a:
            for combo, by_d in a["grid"].items():
                for d, by_k in by_d.items():
                    for k, m in by_k.items():
                        rows += _matrix_rows(info, m, order, f"grid:{combo}", d, int(k))
            for mod, m in a["drift"].items():
                rows += _matrix_rows(info, m, order, "drift", mod, None)
            rows += _matrix_rows(info, a["alignment"], order, "alignment", None, None)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["k"] = df["k"].astype("Int64")
    return df


def _matrix_rows(info, m, order, metric, direction, k):
    return [{**info, "policy": "anatomy", "step": s, "task": order[i], "task_index": i, "direction": direction,
             "k": k, "metric": metric, "value": v}
            for s, row in enumerate(m) for i, v in enumerate(row) if v is not None]


def per_run_summary(c: Collected) -> pd.DataFrame:
    """One row per (run, policy, direction, K): final average recall, forgetting, BWT, index cost."""
    swept = swept_keys(c.runs)
    rows = []
    for name, res in c.runs.items():
        info = run_info(name, res, swept)
        for policy, pr in res["by_policy"].items():
            cost = pr["index_cost"]
            for d in pr["summary"].get("avg_final_recall", {}):
                for k in pr["summary"]["avg_final_recall"][d]:
                    rows.append({**info, "policy": policy, "direction": d, "k": int(k),
                                 "avg_final_recall": pr["summary"]["avg_final_recall"][d][k],
                                 "forgetting": pr["summary"]["forgetting"][d][k], "bwt": pr["summary"]["bwt"][d][k],
                                 "index_cost": cost["images_embedded"] + cost["captions_embedded"]})
    return pd.DataFrame(rows)
