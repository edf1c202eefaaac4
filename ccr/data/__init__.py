"""Datasets (generated default, Karpathy-format JSON), task splits and task orders."""

from ccr.data.dataset import DataError, RetrievalDataset
from ccr.data.load import (
    check_control,
    check_tasks,
    checked_order,
    load_dataset,
    resolve_task_order,
    sequence_tasks,
)

__all__ = ["DataError", "RetrievalDataset", "load_dataset", "resolve_task_order", "sequence_tasks", "check_tasks",
           "check_control", "checked_order"]
