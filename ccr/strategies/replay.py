"""Experience replay: a memory of image-caption pairs from past tasks, mixed into each batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ccr import seeds
from ccr.errors import ConfigError
from ccr.seeds import task_seed
from ccr.strategies.base import Strategy, TaskContext, register
from ccr.strategies.context import sample_captions

if TYPE_CHECKING:
    import torch


@dataclass
class ReplayParams:
    budget: int = 200  # total pairs kept over all past tasks
    selection: str = "reservoir"  # reservoir | herding
    batch: int = 16  # memory pairs appended to every batch

    def check(self, key: str) -> None:
        if self.selection not in ("reservoir", "herding"):
            raise ConfigError(f"{key}.selection: {self.selection!r} is not one of reservoir, herding")
        if self.budget < 1 or self.batch < 1:
            raise ConfigError(f"{key}: budget and batch must be >= 1")


def herding(features: np.ndarray, m: int) -> np.ndarray:
    """iCaRL herding: greedily pick m rows whose running mean best approximates the mean of all rows."""
    mu = features.mean(0)
    chosen: list[int] = []
    acc = np.zeros_like(mu)
    available = np.ones(len(features), bool)
    for k in range(1, min(m, len(features)) + 1):
        gap = np.linalg.norm(mu - (acc[None] + features) / k, axis=1)
        gap[~available] = np.inf
        i = int(np.argmin(gap))
        chosen.append(i)
        available[i] = False
        acc += features[i]
    return np.array(chosen, dtype=np.int64)


class EpisodicMemory:
    """At most `budget` (image, caption) pairs of past tasks, split evenly over the tasks seen so far so
    that every one stays represented; each task's share is kept in its ranked order and shrinks from its
    tail as new tasks arrive. Used by replay (rows mixed into batches) and A-GEM (a reference gradient)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.tasks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (image ids, caption ids), ranked

    def __len__(self) -> int:
        return sum(len(m[0]) for m in self.tasks.values())

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.tasks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([m[0] for m in self.tasks.values()]),
                np.concatenate([m[1] for m in self.tasks.values()]))

    def share(self) -> int:
        """How many pairs the next task may keep (and every task keeps once it is added)."""
        return max(1, self.budget // (len(self.tasks) + 1))

    def add(self, task: str, imgs: np.ndarray, caps: np.ndarray) -> None:
        """Add a task's candidates, best first; every share is cut to fit the budget."""
        share = self.share()
        self.tasks[task] = (imgs[:share], caps[:share])
        for t, (mi, mc) in self.tasks.items():
            self.tasks[t] = (mi[:share], mc[:share])
        assert len(self) <= self.budget, (len(self), self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {t: (a.copy(), b.copy()) for t, (a, b) in self.tasks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks = {t: (np.asarray(a), np.asarray(b)) for t, (a, b) in state.items()}

    def candidates(self, ctx: TaskContext, salt: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """The task's training images, one sampled caption each, and the generator that drew them (seeded
        by the run seed and the task only: the same on every rank)."""
        rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, salt))
        imgs = ctx.dataset.image_ids(ctx.task, "train")
        return imgs, sample_captions(ctx, imgs, rng), rng


class WithMemory(Strategy):
    """A strategy whose state is an episodic memory (`self.memory`): checkpointed with it, and counted as what a
    deployment keeps beside the model (Replay, A-GEM)."""

    memory: EpisodicMemory

    def state_dict(self):
        return {"memory": self.memory.state_dict()}

    def kept_items(self):
        return self.memory.pairs()

    def load_state_dict(self, state):
        self.memory.load_state_dict(state.get("memory", {}))


@register
class Replay(WithMemory):
    """Replay (e.g. Rolnick et al., NeurIPS 2019; herding as iCaRL, Rebuffi et al., CVPR 2017).

    The memory holds at most `budget` (image, caption) pairs, split evenly across the tasks seen so
    far, so every past task stays represented; each task's share is ordered by the selection rule
    (a seeded random order, or herding on the model's joint embeddings) and shrinks from its tail
    as new tasks arrive. Selection is deterministic given the seed, so every DDP rank holds the
    same memory; replay rows are drawn once for the global batch and sliced per rank.
    """

    name = "replay"
    source = "Rolnick et al. 2019; Rebuffi et al. 2017 (herding)"
    Params = ReplayParams
    relative_work = 1.3  # bench/strategy_work.py

    def __init__(self, params=None):
        super().__init__(params)
        self.memory = EpisodicMemory(self.params.budget)
        self.rng: np.random.Generator | None = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.memory.pairs()

    def before_task(self, ctx, model):
        # the same draws on every rank
        self.rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, seeds.REPLAY_MEMORY))

    def augment_batch(self, ctx, image_ids, caption_ids):
        """`batch` memory rows per rank: one draw for the global batch, each rank its slice (so W workers
        replay what one process with W times the batch replays)."""
        imgs, caps = self.pairs()
        n = min(self.params.batch, len(imgs) // ctx.world_size)
        if n == 0:
            return image_ids, caption_ids
        pick = self.rng.choice(len(imgs), n * ctx.world_size, replace=False)[ctx.global_slice(n)]
        return np.concatenate([image_ids, imgs[pick]]), np.concatenate([caption_ids, caps[pick]])

    def _rank_candidates(self, ctx: TaskContext, model: torch.nn.Module, imgs: np.ndarray, caps: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
        if self.params.selection == "reservoir":
            return rng.permutation(len(imgs))
        from ccr.models.embed import Embedder

        emb = Embedder(model, ctx.dataset, ctx.tokens, ctx.device, amp=ctx.cfg.train.amp)
        feats = np.concatenate([emb.embed("images", imgs), emb.embed("captions", caps)], axis=1)
        return herding(feats, len(imgs))

    def after_task(self, ctx, model):
        imgs, caps, rng = self.memory.candidates(ctx, seeds.REPLAY_CANDIDATES)
        order = self._rank_candidates(ctx, model, imgs, caps, rng)[:self.memory.share()]
        self.memory.add(ctx.task, imgs[order], caps[order])
