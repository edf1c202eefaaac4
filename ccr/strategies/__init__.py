"""Strategies, registered by name: `finetune`, `joint` and the continual-learning methods (the registry
lives in `ccr.strategies.base`, with the class it registers)."""

from ccr.strategies import anchored, basic, distill, gradient, regularize, replay  # noqa: F401  (registers)
from ccr.strategies.base import (
    REGISTRY,
    Composite,
    Strategy,
    build_strategy,
    check_strategy_config,
    register,
    strategy_params,
    strategy_work,
)
from ccr.strategies.context import Batch, TaskContext

__all__ = ["REGISTRY", "Batch", "Composite", "Strategy", "TaskContext", "build_strategy",
           "check_strategy_config", "register", "strategy_params", "strategy_work"]
