"""Datasets (generated default, Karpathy-format JSON), task splits and task orders."""

from __future__ import annotations

import numpy as np

from ccr.config import Config
from ccr.data.dataset import DataError, RetrievalDataset
from ccr.data.generated import load_generated
from ccr.data.karpathy import load_karpathy

__all__ = ["DataError", "RetrievalDataset", "load_dataset", "resolve_task_order", "check_tasks"]


def load_dataset(cfg: Config) -> RetrievalDataset:
    """The dataset named by `cfg.data`, fully checked."""
    if cfg.data.kind == "generated":
        return load_generated(cfg.data)
    return load_karpathy(cfg.data, cfg.model.image.image_size)


def resolve_task_order(cfg: Config, ds: RetrievalDataset) -> list[str]:
    """The task order: explicit list, a seeded random permutation, or the dataset's natural order."""
    order = cfg.tasks.order
    if order is None:
        return list(ds.task_names)
    if order == "random":
        rng = np.random.default_rng(cfg.seed)
        return [ds.task_names[i] for i in rng.permutation(len(ds.task_names))]
    unknown = [t for t in order if t not in ds.task_names]
    if unknown:
        raise DataError(f"tasks.order names unknown task(s) {unknown}; the dataset's tasks are {ds.task_names}")
    return list(order)


def check_tasks(ds: RetrievalDataset, order: list[str]) -> None:
    """Every task in the order needs training and test items."""
    for t in order:
        if len(ds.image_ids(t, "test")) == 0:
            raise DataError(f"task {t!r} has no test items: its galleries and queries would be empty")
        if len(ds.image_ids(t, "train")) == 0:
            raise DataError(f"task {t!r} has no training items")
