"""Strategy base class and registry.

A strategy decides how θ_{t-1} becomes θ_t. It is a small class with no-op hooks (as Avalanche's
plugins): `train_items`, `before_task`, `augment_batch`, `loss_terms`, `after_task`, and
`state_dict`/`load_state_dict` so its memory (Fisher, replay buffer, old model) checkpoints with
the model. Hyperparameters are a dataclass `Params`, validated like the rest of the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from ccr.config import Config
    from ccr.data.dataset import RetrievalDataset
    from ccr.models import DualEncoder, TokenizedCaptions

REGISTRY: dict[str, type[Strategy]] = {}
HOOKS = ("train_items", "before_task", "augment_batch", "loss_terms", "after_task")


@dataclass
class NoParams:
    pass


@dataclass
class TaskContext:
    """What a strategy may look at while task `task` (index `index` of `order`) is learned."""

    index: int
    order: list[str]
    dataset: RetrievalDataset
    tokens: TokenizedCaptions
    cfg: Config
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def task(self) -> str:
        return self.order[self.index]

    @property
    def seen(self) -> list[str]:
        return self.order[: self.index + 1]


@dataclass
class Batch:
    """One training batch. Rows [:n_current] come from the current task; later rows from memory."""

    image_ids: np.ndarray
    caption_ids: np.ndarray
    images: torch.Tensor  # (B, 3, H, W) uint8
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_current: int
    img_emb: torch.Tensor | None = None  # (B, D) from the model being trained
    txt_emb: torch.Tensor | None = None


class Strategy:
    """Base: fine-tuning behaviour. Subclasses override only the hooks they need."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    supports_distributed: ClassVar[bool] = True  # DDP-correct: state consistent across ranks

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()

    # ---- hooks (no-ops) ---------------------------------------------------------------------
    def train_items(self, ctx: TaskContext, items: np.ndarray) -> np.ndarray:
        """The training image ids for this task (joint training widens them)."""
        return items

    def before_task(self, ctx: TaskContext, model: DualEncoder) -> None:
        """Called before training on ctx.task (e.g. freeze parameters, snapshot the old model)."""

    def augment_batch(self, ctx: TaskContext, image_ids: np.ndarray, caption_ids: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Add rows to a batch (replay); returns the ids with extra rows appended."""
        return image_ids, caption_ids

    def loss_terms(self, ctx: TaskContext, model: DualEncoder, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra named terms; keys ending in `_loss` add to the objective."""
        return {}

    def after_task(self, ctx: TaskContext, model: DualEncoder) -> None:
        """Called after training on ctx.task (e.g. estimate Fisher, update memory)."""

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def defines(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Strategy, hook)


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy usable by name; warns of misspelled hooks at import time."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name`")
    for attr in vars(cls):
        if (attr.startswith(("before_", "after_")) or attr.endswith("_terms")) and attr not in HOOKS:
            raise TypeError(f"strategy {cls.name}: {attr!r} is not a hook (hooks: {', '.join(HOOKS)})")
    REGISTRY[cls.name] = cls
    return cls


class Composite(Strategy):
    """Several strategies applied in order: every hook calls each strategy that defines it."""

    name = "composite"

    def __init__(self, parts: list[Strategy]):
        super().__init__(NoParams())
        self.parts = parts
        self.supports_distributed = all(p.supports_distributed for p in parts)

    def _each(self, hook: str) -> list[Strategy]:
        return [p for p in self.parts if p.defines(hook)]

    def train_items(self, ctx, items):
        for p in self._each("train_items"):
            items = p.train_items(ctx, items)
        return items

    def before_task(self, ctx, model):
        for p in self._each("before_task"):
            p.before_task(ctx, model)

    def augment_batch(self, ctx, image_ids, caption_ids):
        for p in self._each("augment_batch"):
            image_ids, caption_ids = p.augment_batch(ctx, image_ids, caption_ids)
        return image_ids, caption_ids

    def loss_terms(self, ctx, model, batch):
        out: dict[str, torch.Tensor] = {}
        for p in self._each("loss_terms"):
            for k, v in p.loss_terms(ctx, model, batch).items():
                out[f"{p.name}/{k}" if k in out else k] = v
        return out

    def after_task(self, ctx, model):
        for p in self._each("after_task"):
            p.after_task(ctx, model)

    def state_dict(self):
        return {p.name: p.state_dict() for p in self.parts}

    def load_state_dict(self, state):
        for p in self.parts:
            p.load_state_dict(state.get(p.name, {}))

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]


def _names(name: str | list[str]) -> list[str]:
    return [name] if isinstance(name, str) else list(name)


def check_strategy_config(scfg) -> None:
    """Unknown strategy names or hyperparameters -> ConfigError listing the valid choices."""
    from ccr.config import ConfigError, from_dict

    names = _names(scfg.name)
    if not names:
        raise ConfigError("config key 'strategy.name': give at least one strategy")
    valid = ", ".join(sorted(REGISTRY))
    for n in names:
        if n not in REGISTRY:
            raise ConfigError(f"config key 'strategy.name': unknown strategy {n!r} (valid: {valid})")
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'strategy.name': a strategy is named twice: {names}")
    for n, p in scfg.params.items():
        if n not in REGISTRY:
            raise ConfigError(f"config key 'strategy.params.{n}': unknown strategy {n!r} (valid: {valid})")
        obj = from_dict(REGISTRY[n].Params, p, f"strategy.params.{n}")
        check = getattr(obj, "check", None)
        if check:
            check(f"strategy.params.{n}")
    # fill defaults so the saved config states every hyperparameter that was used
    for n in names:
        full = dataclasses.asdict(from_dict(REGISTRY[n].Params, scfg.params.get(n, {}), f"strategy.params.{n}"))
        if full:
            scfg.params[n] = full


def build_strategy(scfg) -> Strategy:
    """The configured strategy (a Composite when several are named)."""
    from ccr.config import from_dict

    parts = [REGISTRY[n](from_dict(REGISTRY[n].Params, scfg.params.get(n, {}), f"strategy.params.{n}"))
             for n in _names(scfg.name)]
    return parts[0] if len(parts) == 1 else Composite(parts)
