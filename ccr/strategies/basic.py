"""The two bounds every study needs: fine-tuning (lower) and joint training (upper)."""

from __future__ import annotations

import numpy as np

from ccr.strategies.base import Strategy, TaskContext, register


@register
class Finetune(Strategy):
    """Plain fine-tuning on each new task: the lower bound of continual learning."""

    name = "finetune"
    source = "baseline"


@register
class Joint(Strategy):
    """Joint training on the union of all tasks seen so far: the upper bound (not continual)."""

    name = "joint"
    source = "baseline (multi-task upper bound)"

    def train_items(self, ctx: TaskContext, items: np.ndarray) -> np.ndarray:
        return ctx.dataset.image_ids(ctx.seen, "train")

    @classmethod
    def work(cls, n_tasks: int) -> float:
        """Task t trains on t tasks' pairs: 1 + 2 + ... + n finetune-tasks."""
        return cls.relative_work * n_tasks * (n_tasks + 1) / 2
