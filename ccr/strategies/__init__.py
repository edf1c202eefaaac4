"""Strategies, registered by name: `finetune`, `joint` and the continual-learning methods."""

from ccr.strategies import basic, distill, regularize, replay  # noqa: F401  (registers)
from ccr.strategies.base import (
    REGISTRY,
    Batch,
    Composite,
    Strategy,
    TaskContext,
    build_strategy,
    check_strategy_config,
    register,
)

__all__ = ["REGISTRY", "Batch", "Composite", "Strategy", "TaskContext", "build_strategy",
           "check_strategy_config", "register"]
