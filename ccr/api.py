"""ccr's public extension surface: what a user's own module (a plugin, `plugins: [my_module.py]`) needs to add
a continual-learning strategy, an indexing policy or a dataset loader, written the way ccr's own are.

    from ccr.api import Strategy, register_strategy

    @register_strategy
    class MyMethod(Strategy):
        name = "my_method"
        def loss_terms(self, ctx, model, batch): ...

Every name here is re-exported from where it lives; a test holds this list, so a name that disappears is a
failing test, not a user's broken plugin. Hooks of a strategy (`STRATEGY_HOOKS`) are methods of `Strategy`
with their signatures and docstrings; an indexing policy overrides `IndexPolicy.update_old(state, inp, counts)`.
"""

from __future__ import annotations

from ccr.data.dataset import ArrayImages, RetrievalDataset
from ccr.data.registry import register_loader
from ccr.errors import ConfigError, DataError
from ccr.index.gallery import MODALITIES, Gallery, IndexState
from ccr.index.policies import IndexPolicy, StepInput, register_policy
from ccr.seeds import task_seed
from ccr.strategies.base import HOOKS as STRATEGY_HOOKS
from ccr.strategies.base import NoParams, Strategy
from ccr.strategies.base import register as register_strategy
from ccr.strategies.context import Batch, TaskContext

__all__ = ["ArrayImages", "Batch", "ConfigError", "DataError", "Gallery", "IndexPolicy", "IndexState", "MODALITIES",
           "NoParams", "RetrievalDataset", "STRATEGY_HOOKS", "StepInput", "Strategy", "TaskContext",
           "register_loader", "register_policy", "register_strategy", "task_seed"]
