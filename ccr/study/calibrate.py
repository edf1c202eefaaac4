"""`ccr calibrate`: what this device does with a study's model, measured long enough to price re-indexing with.

A run measures its embedding throughput from about a second of work, which varies 1.6x between identical
models; the cost of re-indexing a billion items extrapolated from that is noise. Calibration embeds with the
study's own model, data path and `Embedder` at the evaluation batch size, after a warm-up, for at least
`seconds` per modality, and times the configured index (training its approximate part on a sample of the size
a gallery trains on, then adding vectors). `ccr analyze --gallery-size N --calibration FILE` prices every run of
the same model, evaluation batch size and device with these numbers (ccr.analysis.economics).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccr.config.schema import Config, IndexConfig, to_dict
from ccr.errors import ConfigError
from ccr.measure.calibration import KIND, VERSION

log = logging.getLogger(__name__)

SAMPLE = 20000  # what a gallery trains its approximate index on (ccr.index.gallery.Gallery.sample)


def calibrate(cfg: Config, seconds: float = 10.0, index_vectors: int = 200_000, rounds: int = 1) -> dict[str, Any]:
    """The calibration record of `cfg`'s model on the device `train.device` resolves to (see the module).
    `rounds` > 1: images and captions measured in turn that many times, each rate the median of its rounds (all
    kept): one measurement on a shared 2-core machine varied by about 7 % from the next (docs/benchmarks.md)."""
    from ccr.io.provenance import device_name, provenance
    from ccr.io.redact import redact_tree

    if not seconds > 0 or index_vectors < 1 or rounds < 1:
        raise ConfigError(f"calibration needs seconds > 0, index vectors >= 1 and rounds >= 1, got {seconds}, "
                          f"{index_vectors}, {rounds}")
    cfg, ds, embedder = study_embedder(cfg)
    device = embedder.device
    items, what = calibration_items(ds)
    measured = [{m: _rate(embedder, m, items[m], seconds) for m in ("images", "captions")} for _ in range(rounds)]
    rates = {}
    for m in ("images", "captions"):
        ranked = sorted((r[m] for r in measured), key=lambda r: r["per_second"])
        rates[m] = {**ranked[(len(ranked) - 1) // 2], "rounds": [r[m]["per_second"] for r in measured]}
    index = index_rates(cfg.index, cfg.model.embed_dim, index_vectors, cfg.seed)
    config = json.loads(json.dumps(redact_tree(to_dict(cfg)), default=str))
    record = {"kind": KIND, "version": VERSION, "created": time.time(),
              "model": config["model"], "eval_batch_size": cfg.eval.batch_size, "device": str(device),
              "device_name": device_name(device), "threads": torch.get_num_threads(), "amp": cfg.train.amp,
              "items": what,
              "images_per_second": rates["images"]["per_second"],
              "captions_per_second": rates["captions"]["per_second"],
              "embedding": rates, "index": index, "config": config, **provenance()}
    log.info("calibration on %s (%s): %.1f images/s, %.1f captions/s; %s index: %.2f s training, %.2f s per million "
             "vectors added", record["device"], record["device_name"], record["images_per_second"],
             record["captions_per_second"], index["kind"], index["train_seconds"], index["add_seconds_per_million"])
    return record


def calibration_items(ds) -> tuple[dict[str, np.ndarray], str]:
    """The items calibration embeds, per modality, and what they are: a study's distractors when it has them
    (eval.distractors: what a re-index at scale embeds, read from their shards and decoded), else every item of
    its dataset."""
    from ccr.data.webdataset import DISTRACTORS, SPLIT

    if "distractors" in ds.info:
        return {"images": ds.image_ids(DISTRACTORS, SPLIT), "captions": ds.caption_ids(DISTRACTORS, SPLIT)}, \
            "distractors"
    return {"images": np.arange(ds.n_images, dtype=np.int64),
            "captions": np.arange(len(ds.captions), dtype=np.int64)}, "dataset"


def study_embedder(cfg: Config):
    """(the resolved config, its dataset, an Embedder of its model): what a study embeds with, on the device
    `train.device` resolves to, at the evaluation batch size (seeded or pretrained weights, adapters attached,
    the tokenizer a study would fit). Calibration and bench/calibration_check.py both time this one."""
    from ccr.data import checked_order, load_study_dataset
    from ccr.io.storage import open_storage
    from ccr.models import build_for, model_source
    from ccr.models.embed import Embedder
    from ccr.study.outputs import TOKENIZER, write_tokenizer
    from ccr.train import resolve_device

    source = model_source(cfg)
    cfg = source.cfg
    cfg.index.check_dim(cfg.model.embed_dim)
    ds = load_study_dataset(cfg, source.pixels)  # with its distractors
    order = checked_order(cfg, ds)
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with tempfile.TemporaryDirectory(prefix="ccr-calibrate.") as tmp:  # the tokenizer a study would fit
        write_tokenizer(open_storage(tmp), Path(tmp), source, ds, order)
        model, _, tokens = build_for(source, ds, Path(tmp) / TOKENIZER, device)
    return cfg, ds, Embedder(model, ds, tokens, device, cfg.eval.batch_size, cfg.train.amp,
                             workers=cfg.data.num_workers)


def _rate(embedder, modality: str, ids: np.ndarray, seconds: float) -> dict[str, Any]:
    """Items per second of `embedder` on `modality`, as a large gallery is embedded: in calls of at least a second
    each (a call's start, its loader's start, costs what a gallery of millions pays once per part). Warm-up: one
    batch, then calls of 8 batches, doubling until one takes a second; then calls of that size, cycling through
    `ids`, until `seconds` have passed. Each call's rate is kept to show the spread."""
    batch = embedder.batch_size
    embedder.run(modality, ids[:batch])
    size, at = 8 * batch, 0

    def call(n: int) -> float:
        nonlocal at
        part = np.take(ids, np.arange(at, at + n), mode="wrap")
        at = (at + n) % len(ids)
        t = time.perf_counter()
        embedder.run(modality, part)
        return time.perf_counter() - t

    while call(size) < 1.0 and size < 2**22:
        size *= 2
    chunks, done = [], 0
    t0 = time.perf_counter()
    while True:
        chunks.append(size / call(size))
        done += size
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {"per_second": done / elapsed, "items": done, "seconds": round(elapsed, 4), "batch_size": batch,
            "call_items": size, "calls": len(chunks),
            "call_per_second": {"min": min(chunks), "median": float(np.median(chunks)), "max": max(chunks)}}


def index_rates(icfg: IndexConfig, dim: int, n: int, seed: int = 0) -> dict[str, Any]:
    """Seconds to train the configured index (on a gallery's sample size) and to add `n` random unit vectors to
    it, per million: the index's share of a re-index at another gallery size."""
    from ccr.index.search import ApproxIndex, FlatIndex, train_template

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    sizes: dict[str, int] = {}
    train = 0.0
    if icfg.approx == "none":
        t0 = time.perf_counter()
        FlatIndex(x, ids, icfg.backend)
        add = time.perf_counter() - t0
        trained_on = 0
    else:
        sample = x[:SAMPLE]
        t0 = time.perf_counter()
        template, sizes = train_template(icfg, sample)
        train = time.perf_counter() - t0
        t0 = time.perf_counter()
        ApproxIndex(x, ids, template, icfg.nprobe)
        add = time.perf_counter() - t0
        trained_on = len(sample)
    return {"kind": "flat" if icfg.approx == "none" else icfg.approx, "backend": icfg.backend, "dim": dim,
            "vectors": n, "train_vectors": trained_on, "train_seconds": round(train, 4),
            "add_seconds_per_million": add / n * 1e6, "sizes": sizes}
