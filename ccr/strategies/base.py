"""Strategy base class and registry.

A strategy decides how θ_{t-1} becomes θ_t. It is a small class with no-op hooks (as Avalanche's
plugins): `train_items`, `before_task`, `configure_optimizer`, `augment_batch`, `loss_terms`,
`after_backward` (the complete gradient, before the step: gradient projection), `after_task`, and
`state_dict`/`load_state_dict` so its memory (Fisher, replay buffer, old model) checkpoints with
the model. Hyperparameters are a dataclass `Params`, validated like the rest of the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ccr.config.plugins import claim_name
from ccr.errors import ConfigError
from ccr.strategies.context import Batch, TaskContext
from ccr.typed import from_dict

if TYPE_CHECKING:
    import torch

    from ccr.models import DualEncoder

REGISTRY: dict[str, type[Strategy]] = {}
HOOKS = ("train_items", "before_task", "configure_optimizer", "augment_batch", "loss_terms", "after_backward",
         "after_task")


@dataclass
class NoParams:
    pass


class Strategy:
    """Base: fine-tuning behaviour. Subclasses override only the hooks they need."""

    name: ClassVar[str] = ""
    replaces_builtin: ClassVar[bool] = False  # a plugin's class may take the name of one of ccr's own
    source: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    supports_distributed: ClassVar[bool] = True  # DDP-correct: state consistent across ranks
    # a study's time with this strategy against finetune's on the same config, measured on the embedded default
    # (docs/benchmarks.md): a sweep starts its longest trials first (ccr.distributed.sweep_spec.launch_order)
    relative_work: ClassVar[float] = 1.0

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()

    def check(self, cfg) -> None:
        """Check what the strategy needs of the config alone (an adapter, reference tasks named): run whenever
        a config is built, so that `ccr sweep` refuses a wrong cell before Ray starts; raise ConfigError."""

    def validate(self, cfg, dataset, order: list[str]) -> None:
        """Check what the strategy needs of the data (e.g. reference tasks that exist), before anything trains;
        raise ConfigError or DataError naming the problem."""

    # ---- hooks (no-ops) ---------------------------------------------------------------------
    def train_items(self, ctx: TaskContext, items: np.ndarray) -> np.ndarray:
        """The training image ids for this task (joint training widens them)."""
        return items

    def before_task(self, ctx: TaskContext, model: DualEncoder) -> None:
        """Called before training on ctx.task (e.g. freeze parameters, snapshot the old model)."""

    def augment_batch(self, ctx: TaskContext, image_ids: np.ndarray, caption_ids: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Add rows to a batch (replay); returns the ids with extra rows appended. Called for every batch
        of a task before the task trains (the input pipeline loads images ahead), in batch order: it
        may draw from its own seeded generator, never look at the model."""
        return image_ids, caption_ids

    def loss_terms(self, ctx: TaskContext, model: DualEncoder, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra named terms; keys ending in `_loss` add to the objective."""
        return {}

    def configure_optimizer(self, ctx: TaskContext, model: DualEncoder, params: list[torch.nn.Parameter]
                            ) -> torch.optim.Optimizer:
        """The optimizer for this task over `params` (the trainable ones). Default: AdamW with train.lr and
        train.weight_decay. Parameter groups may carry their own `lr`: the per-task schedule (warmup,
        then cosine) scales each group's own learning rate."""
        import torch

        return torch.optim.AdamW(params, lr=ctx.cfg.train.lr, weight_decay=ctx.cfg.train.weight_decay)

    def after_backward(self, ctx: TaskContext, model: DualEncoder, batch: Batch) -> None:
        """Called when the gradient of one optimizer step is complete (after the last accumulated
        backward; under DDP already averaged over ranks), before clipping and the step: the place to
        project or rescale gradients (A-GEM)."""

    def after_task(self, ctx: TaskContext, model: DualEncoder) -> None:
        """Called after training on ctx.task (e.g. estimate Fisher, update memory)."""

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def kept_items(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The dataset items (image ids, caption ids; None: all captions of those images) the strategy keeps
        between tasks (a replay memory, reference data): what a deployment must store beside the model,
        counted in the field table's extra storage at their own size (`kept_storage`). Its state_dict's
        tensors and arrays count as they are."""
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    @classmethod
    def work(cls, n_tasks: int) -> float:
        """Training work of a study of `n_tasks` tasks with this strategy, in finetune-tasks: what a sweep
        orders its trials by, so that the longest do not start last while other slots sit idle."""
        return cls.relative_work * n_tasks

    @classmethod
    def defines(cls, hook: str) -> bool:
        """Whether this strategy overrides `hook` (a question about the class: no instance needed)."""
        return getattr(cls, hook) is not getattr(Strategy, hook)


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy usable by name; refuses misspelled hooks at import time, and a name of
    ccr's own unless the class says `replaces_builtin = True`."""
    claim_name("strategy", cls.name, cls, REGISTRY, "strategy.name")
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

    def check(self, cfg):
        for p in self.parts:
            p.check(cfg)

    def validate(self, cfg, dataset, order):
        for p in self.parts:
            p.validate(cfg, dataset, order)

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

    def configure_optimizer(self, ctx, model, params):
        builders = self._each("configure_optimizer")  # at most one (checked with the config)
        return (builders[0] if builders else super()).configure_optimizer(ctx, model, params)

    def after_backward(self, ctx, model, batch):
        for p in self._each("after_backward"):
            p.after_backward(ctx, model, batch)

    def after_task(self, ctx, model):
        for p in self._each("after_task"):
            p.after_task(ctx, model)

    def state_dict(self):
        return {p.name: p.state_dict() for p in self.parts}

    def kept_items(self) -> tuple[np.ndarray, np.ndarray | None]:
        kept = [p.kept_items() for p in self.parts]
        images = np.unique(np.concatenate([k[0] for k in kept])).astype(np.int64)
        if any(k[1] is None for k in kept):  # a part keeps all captions of its images
            return images, None
        return images, np.unique(np.concatenate([k[1] for k in kept])).astype(np.int64)

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
    if sum(REGISTRY[n].defines("configure_optimizer") for n in names) > 1:
        raise ConfigError(f"config key 'strategy.name': {names} - more than one of these strategies builds "
                          "the optimizer (configure_optimizer); compose at most one of them")


def strategy_params(scfg) -> dict[str, dict[str, Any]]:
    """Every named strategy's hyperparameters with defaults filled in (a new dict; scfg is not changed),
    so the saved config states every hyperparameter that was used, and only those: parameters given for
    a strategy the study does not run (a sweep sets them for all its strategies) are checked, then left
    out, so they neither show in results nor make two equal studies differ."""
    out: dict[str, dict[str, Any]] = {}
    for n in _names(scfg.name):
        full = dataclasses.asdict(from_dict(REGISTRY[n].Params, scfg.params.get(n, {}), f"strategy.params.{n}"))
        if full:
            out[n] = full
    return out


def strategy_work(scfg, n_tasks: int) -> float:
    """A study's training work in finetune-tasks (Strategy.work); several strategies add their extra work."""
    works = [REGISTRY[n].work(n_tasks) for n in _names(scfg.name)]
    return sum(works) - (len(works) - 1) * n_tasks


def build_strategy(scfg) -> Strategy:
    """The configured strategy (a Composite when several are named)."""
    parts = [REGISTRY[n](from_dict(REGISTRY[n].Params, scfg.params.get(n, {}), f"strategy.params.{n}"))
             for n in _names(scfg.name)]
    return parts[0] if len(parts) == 1 else Composite(parts)


def _nbytes(state: Any) -> int:
    """Bytes of the tensors and arrays in a (nested) state dict."""
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_nbytes(v) for v in state)
    if isinstance(state, np.ndarray):
        return int(state.nbytes)
    if hasattr(state, "element_size") and hasattr(state, "numel"):  # a torch tensor
        return int(state.numel() * state.element_size())
    return 0


def kept_storage(strategy: Strategy, dataset) -> dict[str, float]:
    """What a strategy keeps between tasks beside the model: its state's tensors and arrays (θ0's weights,
    Fisher information, ...) and the dataset items it keeps (`kept_items`: each image as the model takes it,
    uint8 pixels or precomputed features, and its captions' UTF-8 text), in MB (10^6 bytes)."""
    images, captions = strategy.kept_items()
    images = np.asarray(images, np.int64)
    captions = dataset.captions_of(images) if captions is None else np.asarray(captions, np.int64)
    per_image = 0
    if len(images):
        one = dataset.images.load(images[:1])
        per_image = int(one.numel() * one.element_size())
    text = sum(len(dataset.captions[int(c)].encode()) for c in captions)
    return {"kept_state_mb": _nbytes(strategy.state_dict()) / 1e6,
            "kept_items_mb": (len(images) * per_image + text) / 1e6,
            "kept_images": int(len(images)), "kept_captions": int(len(captions))}

