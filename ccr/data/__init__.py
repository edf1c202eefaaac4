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


def check_tasks(ds: RetrievalDataset, order: list[str], min_test: int = 2, workers: int = 1) -> None:
    """Every task in the order needs enough training and test items, checked before anything trains.

    A contrastive batch needs two pairs per worker (in-batch negatives); a task with fewer than
    `min_test` (eval.min_test_items) test images would report recall that means nothing (one test
    image is R@1 = 100 by construction) and inflate every average.
    """
    few_test, few_train = [], []
    for t in order:
        n_test, n_train = len(ds.image_ids(t, "test")), len(ds.image_ids(t, "train"))
        if n_test < min_test:
            few_test.append(f"{t} ({n_test})")
        if n_train < 2 * workers:
            few_train.append(f"{t} ({n_train})")
    if few_test:
        raise DataError(f"tasks with fewer than {min_test} test images (eval.min_test_items): "
                        f"{', '.join(few_test)}; their recall would be meaningless (1 image is R@1 = 100)")
    if few_train:
        raise DataError(f"tasks with fewer than {2 * workers} training images ({workers} worker(s) x 2, for "
                        f"in-batch negatives): {', '.join(few_train)}")
