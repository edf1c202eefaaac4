"""Datasets (generated default, Karpathy-format JSON), task splits and task orders.

Names are handed on when first used: checking a config asks only `ccr.data.registry`, which must not import
torch through this package (1.0 s of every sweep's start-up and every refused config on 2 cores)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccr.data.dataset import DataError, RetrievalDataset
    from ccr.data.load import (
        check_control,
        check_tasks,
        checked_order,
        load_dataset,
        load_study_dataset,
        resolve_task_order,
        sequence_tasks,
    )

__all__ = ["DataError", "RetrievalDataset", "load_dataset", "load_study_dataset",
           "resolve_task_order", "sequence_tasks", "check_tasks",
           "check_control", "checked_order"]


def __getattr__(name: str):
    """The module that defines `name`, imported when the name is first asked for."""
    import importlib

    if name in ("DataError", "RetrievalDataset"):
        return getattr(importlib.import_module("ccr.data.dataset"), name)
    if name in __all__:
        return getattr(importlib.import_module("ccr.data.load"), name)
    raise AttributeError(f"module 'ccr.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
