"""The economics of re-indexing, from the runs' own records: negative flips per policy, the backfill curve
(how much of the old gallery buys how much recall back) and what each policy costs at a gallery size the
user names, on the embedding throughput measured on the runs' device (one per model: the median over the runs of
that model, `shared_throughput`) or one the user gives.

Cost model. A study's galleries are scaled to N images (and, in the study's ratio, N·r captions): every count
of embeddings a policy computed scales by α = N / (images in the study's final gallery). Per model update is
the mean over updates 2..n of what the policy embedded then; over the sequence is everything it embedded,
the first task's gallery included. Device-hours are those of embedding (embeddings divided by the throughput,
per modality) plus those of index building: every embedded entry is (re-)added to the index, at the add rate,
and every training of an approximate index the policy did in the run is done again, at the training time. The
rates come from a calibration of the run's model and device (`ccr calibrate`, `--calibration FILE`) where one
is given; else the throughput is the median over runs of that model and device, and index building is not
priced: a run's own index seconds come from galleries of a test split, where fixed costs dominate (extrapolated
to 10^9 items they overstate a flat index's building a hundredfold). Without a calibration the numbers are
linear in N, and two policies' costs are in the ratio of what each embeds.
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
    calibrations: tuple[dict[str, Any], ...] = ()  # `ccr calibrate` records (ccr.measure.calibration.read_calibration)

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


def read_calibrations(where: list[str]) -> tuple[dict[str, Any], ...]:
    """`ccr calibrate` records from files or URIs, each checked (ccr.measure.calibration.read_calibration); two of the
    same model and device are refused, as it would be unclear which prices the runs."""
    from ccr.io.redact import redact
    from ccr.io.storage import Storage
    from ccr.measure.calibration import read_calibration

    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for w in where:
        store, shown = Storage(w), redact(w)
        try:
            text = store.read_text("")
        except OSError as e:
            raise ConfigError(f"--calibration {shown}: cannot read it ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
        rec = read_calibration(text, shown)
        key = calibration_key(rec)
        if key in out:
            raise ConfigError(f"--calibration {shown} and {out[key][0]} calibrate the same model and device: give "
                              "one")
        out[key] = (shown, rec)
    return tuple(r for _, r in out.values())


def _positive(what: str, v: float | None, low: float, high: float) -> None:
    if v is None:
        return
    ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (low < v <= high if low == 0 else low <= v <= high):
        raise ConfigError(f"{what} must be a finite number {'above 0' if low == 0 else f'from {low:g}'} up to "
                          f"{high:g}, got {v!r}"[:200])


def _gallery(res: dict[str, Any]) -> tuple[int, float]:
    """Images in the study's final gallery (its tasks' test images and its distractors: eval.distractors), and
    captions per image there (from the first step, where every policy embeds exactly the first task's gallery,
    distractors included)."""
    dataset = res.get("dataset") or {}
    tasks = dataset.get("tasks") or {}
    n_img = sum(_count((tasks.get(t) or {}).get("test", 0)) for t in res["task_order"])
    n_img += _count((dataset.get("distractors") or {}).get("samples", 0))
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
    and the device (its kind and its hardware's name)."""
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    ev = cfg.get("eval") if isinstance(cfg.get("eval"), dict) else {}
    emb = res.get("embedding") if isinstance(res.get("embedding"), dict) else {}
    return _key(cfg.get("model"), ev.get("batch_size"), emb.get("device"), emb.get("device_name"))


def calibration_key(rec: dict[str, Any]) -> str:
    """model_key of the runs a calibration record prices."""
    return _key(rec.get("model"), rec.get("eval_batch_size"), rec.get("device"), rec.get("device_name"))


def _key(model: Any, batch_size: Any, device: Any, name: Any) -> str:
    return json.dumps([model, batch_size, device, name], sort_keys=True, default=str)


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


def _index_kind(res: dict[str, Any]) -> tuple[str, Any]:
    """The run's index (flat, or its approximate kind) and embedding dimension: what index rates belong to."""
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    idx = cfg.get("index") if isinstance(cfg.get("index"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    approx = idx.get("approx", "none")
    return ("flat" if approx in (None, "none") else approx), model.get("embed_dim")


def _trainings(pr: dict[str, Any]) -> list[int]:
    """The step of every training of the policy's approximate index, both galleries (none for exact search)."""
    q = pr.get("index_quality") if isinstance(pr.get("index_quality"), dict) else {}
    by_m = q.get("trainings") if isinstance(q.get("trainings"), dict) else {}
    return [int(t.get("step", 0)) for ts in by_m.values() if isinstance(ts, list) for t in ts if isinstance(t, dict)]


def _rates(res: dict[str, Any], cal: dict[str, Any] | None, shared: tuple) -> dict[str, Any]:
    """What a run is priced at: throughputs, seconds per indexed vector and per training, and where each comes
    from."""
    if cal is not None:
        out = {"images_per_second": cal["images_per_second"], "captions_per_second": cal["captions_per_second"],
               "throughput_runs": shared[2], "priced_by": "calibration"}
    else:
        out = {"images_per_second": shared[0], "captions_per_second": shared[1], "throughput_runs": shared[2],
               "priced_by": f"median of {shared[2]} run(s)"}
    idx = (cal or {}).get("index") or {}
    if cal is not None and (idx.get("kind"), idx.get("dim")) == _index_kind(res):
        out.update(index_seconds_per_vector=idx["add_seconds_per_million"] / 1e6,
                   index_training_seconds=idx["train_seconds"], index_priced_by="calibration")
    else:  # a test split's gallery is too small to time an index by: fixed costs dominate its seconds per vector
        out.update(index_seconds_per_vector=None, index_training_seconds=None, index_priced_by=None)
    return out


def cost_rows(runs: dict[str, dict[str, Any]], scale: Scale, k: int) -> pd.DataFrame:
    """One row per run and policy: what the policy embeds and indexes at N, the device-hours and money that costs,
    and the recall and negative flips it buys."""
    rows = []
    shared = shared_throughput(runs)
    calibrations = {calibration_key(r): r for r in scale.calibrations}
    for name, res in runs.items():
        n_img, ratio = _gallery(res)
        emb = res.get("embedding") or {}
        cal = calibrations.get(model_key(res))
        if not n_img:
            continue
        alpha = scale.gallery_size / n_img
        for policy, pr in res["by_policy"].items():
            r = _rates(res, cal, shared[name])
            ips, cps = r["images_per_second"], r["captions_per_second"]
            steps = pr["index_cost"].get("per_step") or []
            n = len(steps)
            upd = steps[1:] or steps
            img_u = alpha * float(np.mean([s["images"] for s in upd])) if upd else float("nan")
            cap_u = alpha * float(np.mean([s["captions"] for s in upd])) if upd else float("nan")
            img_all = alpha * pr["index_cost"]["images_embedded"]
            cap_all = alpha * pr["index_cost"]["captions_embedded"]
            img_last = alpha * steps[-1]["images"] if steps else float("nan")
            cap_last = alpha * steps[-1]["captions"] if steps else float("nan")
            trained = _trainings(pr)
            train_u = sum(1 for t in trained if t >= 1) / (n - 1) if n > 1 else float(len(trained))
            train_last = sum(1 for t in trained if t == n - 1)

            m = pr["metrics"]
            row = {"run": name, "strategy": res["strategy"], "policy": policy, "gallery_size": scale.gallery_size,
                   "captions_per_image": ratio, "device": emb.get("device"), "device_name": emb.get("device_name"),
                   **r, "images_per_update": img_u, "captions_per_update": cap_u,
                   "images_sequence": img_all, "captions_sequence": cap_all,
                   "embed_hours": _hours(img_u, cap_u, ips, cps),
                   "index_hours": _index_hours(r, img_u + cap_u, train_u),
                   "embed_hours_last": _hours(img_last, cap_last, ips, cps),
                   "index_hours_last": _index_hours(r, img_last + cap_last, train_last),
                   "embed_hours_sequence": _hours(img_all, cap_all, ips, cps),
                   "index_hours_sequence": _index_hours(r, img_all + cap_all, len(trained)),
                   f"t2i R@{k}": m.get(metric("avg_final_recall", "t2i", k)),
                   f"i2t R@{k}": m.get(metric("avg_final_recall", "i2t", k)),
                   f"t2i flips@{k}": m.get(metric("negative_flips", "t2i", k)),
                   f"i2t flips@{k}": m.get(metric("negative_flips", "i2t", k))}
            for part in ("", "_last", "_sequence"):  # re-embedding + index building
                row[f"device_hours{part}"] = _sum(row[f"embed_hours{part}"], row[f"index_hours{part}"])
            if scale.images_per_second and scale.captions_per_second:
                row["device_hours_given"] = _sum(_hours(img_u, cap_u, scale.images_per_second,
                                                        scale.captions_per_second), row["index_hours"])
                row["device_hours_sequence_given"] = _sum(_hours(img_all, cap_all, scale.images_per_second,
                                                                 scale.captions_per_second),
                                                          row["index_hours_sequence"])
            if scale.price is not None:
                for col in [c for c in row if c.startswith("device_hours")]:
                    row[col.replace("device_hours", "usd")] = None if row[col] is None else row[col] * scale.price
            rows.append(row)
    return pd.DataFrame(rows)


def _index_hours(rates: dict[str, Any], vectors: float, trainings: float = 0.0) -> float | None:
    """Device-hours of adding `vectors` to the index and training it `trainings` times, at a run's rates (None
    where its index building is not priced)."""
    if rates["index_seconds_per_vector"] is None:
        return None
    return (vectors * rates["index_seconds_per_vector"] + trainings * rates["index_training_seconds"]) / 3600


def _sum(embed: float | None, index: float | None) -> float | None:
    """Device-hours of a re-index: embedding plus index building (embedding alone where the index's are not
    priced: no calibration of the run's model and device)."""
    if embed is None:
        return None
    return embed + (index or 0.0)


def _hours(images: float, captions: float, ips: float | None, cps: float | None) -> float | None:
    if not ips or not cps:
        return None
    return (images / ips + captions / cps) / 3600.0


def cost_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over runs, one row per strategy × policy (where the rates came from: every source, joined)."""
    if rows.empty:
        return rows
    text = [c for c in ("device", "device_name", "priced_by", "index_priced_by") if c in rows]
    num = [c for c in rows.columns if c not in ("run", "strategy", "policy", *text)
           and pd.api.types.is_numeric_dtype(rows[c])]
    groups = rows.groupby(["strategy", "policy"])
    out = groups[num].mean().reset_index()
    for i, c in enumerate(text):
        out.insert(2 + i, c, groups[c].agg(lambda s: ", ".join(sorted({str(v) for v in s if v is not None}))).values)
    out.insert(2 + len(text), "runs", groups.size().values)
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
    fraction of the old gallery, and of adding them to the index, against the recall it buys (per strategy, order,
    fraction; t2i), at the rates cost_rows prices the run's policy at."""
    rows = []
    shared = shared_throughput(runs)
    calibrations = {calibration_key(r): r for r in scale.calibrations}
    for name, res in runs.items():
        n_img, ratio = _gallery(res)
        rates = _rates(res, calibrations.get(model_key(res)), shared[name])
        ips, cps = rates["images_per_second"], rates["captions_per_second"]
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
                img, cap = alpha * (new_img + r["images"]), alpha * (new_cap + r["captions"])
                rows.append({"run": name, "strategy": res["strategy"], "order": r["order"], "fraction": r["fraction"],
                             "recall": r["recall"],
                             "device_hours": _sum(_hours(img, cap, ips, cps), _index_hours(rates, img + cap))})
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
