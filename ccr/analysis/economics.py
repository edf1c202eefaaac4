"""The economics of re-indexing, from the runs' own records: negative flips per policy, the backfill curve
(how much of the old gallery buys how much recall back) and what each policy costs at a gallery size the
user names, on the embedding throughput measured on the runs' device (one per model: the median over the runs of
that model, `shared_throughput`) or one the user gives.

Cost model. A study's galleries are scaled to N images (and, in the study's ratio, N·r captions): every count
of embeddings a policy computed scales by α = N / (images in the study's final gallery). Per model update is
the mean over updates 2..n of what the policy embedded then; over the sequence is everything it embedded,
the first task's gallery included. Device-hours are embeddings divided by the throughput, per modality. So
the numbers are linear in N, and two policies' costs are in the ratio of what each embeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ccr.errors import ConfigError
from ccr.measure.results import metric

MAX_GALLERY = 10**13  # ten trillion items: beyond any gallery, and far from where float costs lose meaning
THROUGHPUT = (1e-3, 1e12)  # embeddings per second a device can be said to reach
MAX_PRICE = 1e6  # USD per device-hour


@dataclass(frozen=True)
class Scale:
    """What `ccr analyze --gallery-size N` (or `ccr.analyze(gallery_size=N)`) asks: a gallery of N images, a
    price per device-hour and, optionally, the user's own throughput (e.g. from bench/ on their hardware).
    Checked here, the one place both front ends pass through: a zero, negative, infinite or absurd value would
    print a cost that means nothing."""

    gallery_size: int
    price: float | None = None  # USD per device-hour
    images_per_second: float | None = None
    captions_per_second: float | None = None

    def __post_init__(self) -> None:
        n = self.gallery_size
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_GALLERY:
            shown = repr(n) if len(repr(n)) < 40 else repr(n)[:30] + f"... ({len(repr(n))} characters)"
            raise ConfigError(f"gallery size must be a whole number from 1 to {MAX_GALLERY:.0e}, got {shown}")
        _positive("device-hour price", self.price, 0.0, MAX_PRICE)
        _positive("images per second", self.images_per_second, *THROUGHPUT)
        _positive("captions per second", self.captions_per_second, *THROUGHPUT)
        if (self.images_per_second is None) != (self.captions_per_second is None):
            raise ConfigError("images per second and captions per second go together (each modality has its own)")


def _positive(what: str, v: float | None, low: float, high: float) -> None:
    if v is None:
        return
    ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (low < v <= high if low == 0 else low <= v <= high):
        raise ConfigError(f"{what} must be a finite number {'above 0' if low == 0 else f'from {low:g}'} up to "
                          f"{high:g}, got {v!r}"[:200])


def _gallery(res: dict[str, Any]) -> tuple[int, float]:
    """Images in the study's final gallery, and captions per image there (from the first step, where every
    policy embeds exactly the first task's gallery)."""
    tasks = (res.get("dataset") or {}).get("tasks") or {}
    n_img = sum(_count((tasks.get(t) or {}).get("test", 0)) for t in res["task_order"])
    first = next(iter(res["by_policy"].values()))["index_cost"].get("per_step") or []
    ratio = _count(first[0]["captions"]) / _count(first[0]["images"]) if first and _count(first[0]["images"]) \
        else 1.0
    return n_img, ratio


def _throughput(res: dict[str, Any]) -> tuple[float | None, float | None]:
    """Images and captions embedded per second in the run, on its recorded device."""
    emb = res.get("embedding") or {}
    return (emb.get("images") or {}).get("per_second"), (emb.get("captions") or {}).get("per_second")


def model_key(res: dict[str, Any]) -> str:
    """What an embedding throughput is a property of: the model (its resolved config), the evaluation batch size
    and the device."""
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    ev = cfg.get("eval") if isinstance(cfg.get("eval"), dict) else {}
    emb = res.get("embedding") if isinstance(res.get("embedding"), dict) else {}
    return json.dumps([cfg.get("model"), ev.get("batch_size"), emb.get("device")], sort_keys=True, default=str)


def shared_throughput(runs: dict[str, dict[str, Any]]) -> dict[str, tuple[float | None, float | None, int]]:
    """Per run: the images/s and captions/s its costs are priced at, and how many runs they come from. One
    throughput for every run of one model on one device (the median of what those runs measured): each run
    measures its own from about a second of embedding, which varies 1.6x between identical models, so pricing a
    run at its own would make equal work cost unequal device-hours."""
    groups: dict[str, list[str]] = {}
    for name, res in runs.items():
        groups.setdefault(model_key(res), []).append(name)
    out = {}
    for names in groups.values():
        found = [_throughput(runs[n]) for n in names]
        med = []
        for i in (0, 1):
            vals = [float(f[i]) for f in found if isinstance(f[i], (int, float)) and np.isfinite(f[i]) and f[i] > 0]
            med.append(float(np.median(vals)) if vals else None)
        out.update({n: (med[0], med[1], len(names)) for n in names})
    return out


def _count(v: Any) -> int:
    """A count from a results file; 0 where it is not a finite number (a damaged or hand-edited file)."""
    return int(v) if isinstance(v, (int, float)) and np.isfinite(v) else 0


def cost_rows(runs: dict[str, dict[str, Any]], scale: Scale, k: int) -> pd.DataFrame:
    """One row per run and policy: what the policy embeds at N, the device-hours and money that costs, and
    the recall and negative flips it buys."""
    rows = []
    shared = shared_throughput(runs)
    for name, res in runs.items():
        n_img, ratio = _gallery(res)
        emb = res.get("embedding") or {}
        ips, cps, same = shared[name]
        if not n_img:
            continue
        alpha = scale.gallery_size / n_img
        for policy, pr in res["by_policy"].items():
            steps = pr["index_cost"].get("per_step") or []
            upd = steps[1:] or steps
            img_u = alpha * float(np.mean([s["images"] for s in upd])) if upd else float("nan")
            cap_u = alpha * float(np.mean([s["captions"] for s in upd])) if upd else float("nan")
            img_all = alpha * pr["index_cost"]["images_embedded"]
            cap_all = alpha * pr["index_cost"]["captions_embedded"]
            m = pr["metrics"]
            row = {"run": name, "strategy": res["strategy"], "policy": policy, "gallery_size": scale.gallery_size,
                   "captions_per_image": ratio, "device": emb.get("device"),
                   "images_per_second": ips, "captions_per_second": cps, "throughput_runs": same,
                   "images_per_update": img_u, "captions_per_update": cap_u,
                   "images_sequence": img_all, "captions_sequence": cap_all,
                   "device_hours": _hours(img_u, cap_u, ips, cps), "device_hours_sequence": _hours(
                       img_all, cap_all, ips, cps),
                   # the last update alone: where the backfill curve (after the last task) starts and ends
                   "device_hours_last": _hours(alpha * steps[-1]["images"], alpha * steps[-1]["captions"], ips, cps)
                   if steps else None,
                   f"t2i R@{k}": m.get(metric("avg_final_recall", "t2i", k)),
                   f"i2t R@{k}": m.get(metric("avg_final_recall", "i2t", k)),
                   f"t2i flips@{k}": m.get(metric("negative_flips", "t2i", k)),
                   f"i2t flips@{k}": m.get(metric("negative_flips", "i2t", k))}
            if scale.images_per_second and scale.captions_per_second:
                row["device_hours_given"] = _hours(img_u, cap_u, scale.images_per_second, scale.captions_per_second)
                row["device_hours_sequence_given"] = _hours(img_all, cap_all, scale.images_per_second,
                                                            scale.captions_per_second)
            if scale.price is not None:
                for col in [c for c in row if c.startswith("device_hours")]:
                    row[col.replace("device_hours", "usd")] = None if row[col] is None else row[col] * scale.price
            rows.append(row)
    return pd.DataFrame(rows)


def _hours(images: float, captions: float, ips: float | None, cps: float | None) -> float | None:
    if not ips or not cps:
        return None
    return (images / ips + captions / cps) / 3600.0


def cost_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over runs, one row per strategy × policy."""
    if rows.empty:
        return rows
    num = [c for c in rows.columns if c not in ("run", "strategy", "policy", "device")
           and pd.api.types.is_numeric_dtype(rows[c])]
    out = rows.groupby(["strategy", "policy"])[num].mean().reset_index()
    out.insert(2, "device", rows.groupby(["strategy", "policy"]).device.agg(
        lambda s: ", ".join(sorted({str(v) for v in s if v is not None}))).values)
    out.insert(3, "runs", rows.groupby(["strategy", "policy"]).size().values)
    return out


def curve_frame(runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Every run's backfill curve records, with the run's strategy."""
    rows = [{"run": name, "strategy": res["strategy"], **r} for name, res in runs.items()
            for r in res.get("backfill_curve") or []]
    return pd.DataFrame(rows)


def fraction_for(fractions: np.ndarray, recall: np.ndarray, target: float) -> float | None:
    """The smallest fraction at which the curve (linear between measured points) reaches `target`."""
    order = np.argsort(fractions)
    f, r = fractions[order], recall[order]
    if r[0] >= target:
        return float(f[0])
    for i in range(1, len(f)):
        if r[i] >= target:
            return float(f[i - 1] + (f[i] - f[i - 1]) * (target - r[i - 1]) / (r[i] - r[i - 1]))
    return None


def backfill_summary(curve: pd.DataFrame, k: int, share: float = 0.9) -> pd.DataFrame:
    """Per strategy, order and direction, after the last task (means over runs): recall at no backfill and at
    full backfill, and the fraction of the old gallery that gets `share` of full backfill's recall back."""
    if curve.empty:
        return pd.DataFrame()
    c = curve[curve.k == k]
    c = c[c.step == c.groupby("run").step.transform("max")]
    mean = c.groupby(["strategy", "order", "direction", "fraction"]).recall.mean().reset_index()
    rows = []
    for (s, o, d), g in mean.groupby(["strategy", "order", "direction"]):
        f, r = g.fraction.to_numpy(float), g.recall.to_numpy(float)
        full = r[np.argmax(f)]
        rows.append({"strategy": s, "order": o, "direction": d, "none": r[np.argmin(f)], "full": full,
                     f"fraction for {int(share * 100)} %": fraction_for(f, r, share * full)})
    return pd.DataFrame(rows)


def curve_costs(runs: dict[str, dict[str, Any]], scale: Scale, k: int) -> pd.DataFrame:
    """The backfill curve of the last update at N: device-hours of embedding the new task plus the re-embedded
    fraction of the old gallery, against the recall it buys (per strategy, order, fraction; t2i)."""
    rows = []
    shared = shared_throughput(runs)
    for name, res in runs.items():
        n_img, ratio = _gallery(res)
        ips, cps, _ = shared[name]
        curve = [r for r in res.get("backfill_curve") or [] if r["k"] == k and r["direction"] == "t2i"]
        if not curve or not n_img:
            continue
        last = max(r["step"] for r in curve)
        alpha = scale.gallery_size / n_img
        steps = res["by_policy"][res["policy"]]["index_cost"].get("per_step") or []
        tasks = (res.get("dataset") or {}).get("tasks") or {}
        new_img = _count((tasks.get(res["task_order"][last]) or {}).get("test", 0))
        new_cap = new_img * ratio if steps else 0
        for r in curve:
            if r["step"] == last:
                rows.append({"run": name, "strategy": res["strategy"], "order": r["order"], "fraction": r["fraction"],
                             "recall": r["recall"],
                             "device_hours": _hours(alpha * (new_img + r["images"]), alpha * (new_cap + r["captions"]),
                                                    ips, cps)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.groupby(["strategy", "order", "fraction"])[["recall", "device_hours"]].mean().reset_index()


def flips_table(summary: pd.DataFrame, k: int) -> pd.DataFrame:
    """Negative flips per strategy × policy at K (means over runs), where measured."""
    if summary.empty or "negative_flips" not in summary:
        return pd.DataFrame()
    s = summary[(summary.k == k) & summary.negative_flips.notna()]
    if s.empty:
        return pd.DataFrame()
    return s.pivot_table(index=["strategy", "policy"], columns="direction", values="negative_flips",
                         aggfunc="mean").reset_index()
