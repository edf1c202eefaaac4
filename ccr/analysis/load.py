"""Find ccr results under a folder and turn them into one tidy table.

One row per (run, policy, trained-up-to step, evaluated task, direction, K, metric), made by
`ccr.measure.results` (which defines the schema and reads every version of it). Corrupt result files are
reported by name and skipped; runs still going (or that left no results) are listed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ccr.config.schema import non_result_keys
from ccr.io.storage import Storage
from ccr.measure.results import matrix_records, summary_records, upgrade
from ccr.measure.results_check import problem

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


def collect(root: str | Path | Storage) -> Collected:
    """Every ccr result below `root`: a local folder or a storage URI (s3://..., see ccr.io.storage)."""
    store = Storage(root)
    c = Collected()
    if not store.exists():
        raise FileNotFoundError(f"no such folder: {store.display()}")
    # every results.json, also under a folder that happens to be named "analysis" (ccr's own analysis
    # output holds none)
    files = store.files()
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
            why = problem(res)
            if why:
                c.corrupt.append((path, why))
                log.warning("skipping results file %s: %s", path, why)
                continue
            if res.get("status") != "complete":
                c.incomplete.append(name)
            c.runs[name] = upgrade(res)  # results of every schema version read as the current one
        elif base == "config.yaml" and _join(folder, "results.json") not in have:
            c.missing.append(folder)
        elif base == "error.txt" and _join(folder, "trial.json") in have:  # a failed `ccr sweep` trial
            c.failed.append((folder, store.read_text(rel)[-500:]))
    return c


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def swept_keys(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between runs (besides seed, task order and resource keys).

    A key absent from some runs (written by an older ccr, or a strategy's parameter in runs of other
    strategies) counts only by the values present. Keys that the tags determine are left out.
    """
    flat = [_flatten(r["config"]) for r in runs.values()]
    keys = sorted(set().union(*flat)) if flat else []
    # keys that change no number (declared so at their fields) are never what a comparison is about; tags are
    # labels, read below
    quiet = [k for k in non_result_keys() if k != "tags"]
    skip = {"seed", "tasks.order"}
    swept = [k for k in keys if k not in skip and not any(k == q or k.startswith(q + ".") for q in quiet)
             and len({json.dumps(f[k], default=str) for f in flat if k in f}) > 1]
    tags = [k for k in swept if k.startswith("tags.")]
    if not tags:
        return swept

    def explained(k: str) -> bool:  # one value (where present) per combination of tags
        seen: dict[str, str] = {}
        for f in flat:
            if k in f:
                label, value = json.dumps([f.get(t) for t in tags]), json.dumps(f[k], default=str)
                if seen.setdefault(label, value) != value:
                    return False
        return True

    # a sweep's named cases (tags.regime) stand for the keys they set: one column, not one per key
    return [k for k in swept if k in tags or not explained(k)]


def run_info(name: str, res: dict[str, Any], swept: list[str]) -> dict[str, Any]:
    flat = _flatten(res["config"])
    info = {"run": name, "strategy": res.get("strategy"), "task_order": ">".join(res["task_order"]),
            "seed": res["seed"], "scope": res.get("scope"), "complete": res.get("status") == "complete"}
    info.update({f"cfg.{k}": flat.get(k) for k in swept if k not in ("strategy.name",)})
    return info


def _rows(c: Collected, records) -> list[dict[str, Any]]:
    """Each run's records, each row led by the run's info: the config flattened once per run, not once per row
    (a sweep's analysis spent most of its time flattening the same configs again)."""
    swept = swept_keys(c.runs)
    rows: list[dict[str, Any]] = []
    for name, res in c.runs.items():
        info = run_info(name, res, swept)
        rows.extend({**info, **rec} for rec in records(res))
    return rows


def tidy(c: Collected) -> pd.DataFrame:
    """The long table: recall per policy, and the anatomy (policy 'anatomy') where present."""
    df = pd.DataFrame(_rows(c, matrix_records))
    if not df.empty:
        df["k"] = df["k"].astype("Int64")
    return df


def per_run_summary(c: Collected) -> pd.DataFrame:
    """One row per (run, policy, direction, K): final average recall, forgetting, BWT, rsum, index cost."""
    return pd.DataFrame(_rows(c, summary_records))


def provenance_frame(c: Collected) -> pd.DataFrame:
    """One row per run: what produced it (versions, commit, host, device, torch threads) and how long it took."""
    rows = []
    for name, res in c.runs.items():
        p = res.get("provenance") or {}
        v, git = p.get("versions") or {}, p.get("git") or {}
        started, finished = p.get("started"), p.get("finished")
        commit = git.get("commit")
        rows.append({
            "run": name, "strategy": res.get("strategy"), "seed": res.get("seed"),
            "task_order": ">".join(res["task_order"]), "status": res.get("status"),
            "seconds": finished - started if started and finished else None,
            "torch_threads": p.get("torch_threads"), "device": p.get("device"), "host": p.get("host"),
            "commit": (commit[:10] + ("+dirty" if git.get("dirty") else "")) if commit else None,
            **{f"version.{k}": v.get(k) for k in ("ccr", "python", "torch", "ray", "faiss-cpu", "numpy")},
        })
    return pd.DataFrame(rows)
