"""Experience replay: a memory of image-caption pairs from past tasks, mixed into each batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ccr.strategies.base import Strategy, TaskContext, register


@dataclass
class ReplayParams:
    budget: int = 200  # total pairs kept over all past tasks
    selection: str = "reservoir"  # reservoir | herding
    batch: int = 16  # memory pairs appended to every batch

    def check(self, key: str) -> None:
        from ccr.config import ConfigError

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


@register
class Replay(Strategy):
    """Replay (e.g. Rolnick et al., NeurIPS 2019; herding as iCaRL, Rebuffi et al., CVPR 2017).

    The memory holds at most `budget` (image, caption) pairs, split evenly across the tasks seen so
    far, so every past task stays represented; each task's share is ordered by the selection rule
    (a seeded random order, or herding on the model's joint embeddings) and shrinks from its tail
    as new tasks arrive. Selection is deterministic given the seed, so every DDP rank holds the
    same memory; each rank draws its own replay rows.
    """

    name = "replay"
    source = "Rolnick et al. 2019; Rebuffi et al. 2017 (herding)"
    Params = ReplayParams

    def __init__(self, params=None):
        super().__init__(params)
        self.memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (image ids, caption ids), ranked
        self.rng: np.random.Generator | None = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.memory:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([m[0] for m in self.memory.values()]),
                np.concatenate([m[1] for m in self.memory.values()]))

    def before_task(self, ctx, model):
        from ccr.train import task_seed

        self.rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, 20 + ctx.rank))

    def augment_batch(self, ctx, image_ids, caption_ids):
        imgs, caps = self.pairs()
        if len(imgs) == 0:
            return image_ids, caption_ids
        pick = self.rng.choice(len(imgs), min(self.params.batch, len(imgs)), replace=False)
        return np.concatenate([image_ids, imgs[pick]]), np.concatenate([caption_ids, caps[pick]])

    def _rank_candidates(self, ctx: TaskContext, model: torch.nn.Module, imgs: np.ndarray, caps: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
        if self.params.selection == "reservoir":
            return rng.permutation(len(imgs))
        from ccr.embed import Embedder

        emb = Embedder(model, ctx.dataset, ctx.tokens, ctx.device, amp=ctx.cfg.train.amp)
        feats = np.concatenate([emb.embed("images", imgs), emb.embed("captions", caps)], axis=1)
        return herding(feats, len(imgs))

    def after_task(self, ctx, model):
        from ccr.train import sample_captions, task_seed

        rng = np.random.default_rng(task_seed(ctx.cfg.seed, ctx.index, 30))  # same on every rank
        imgs = ctx.dataset.image_ids(ctx.task, "train")
        caps = sample_captions(ctx, imgs, rng)
        share = max(1, self.params.budget // (len(self.memory) + 1))
        order = self._rank_candidates(ctx, model, imgs, caps, rng)[:share]
        self.memory[ctx.task] = (imgs[order], caps[order])
        for t, (mi, mc) in self.memory.items():  # shrink every share to fit the budget
            self.memory[t] = (mi[:share], mc[:share])
        total = sum(len(m[0]) for m in self.memory.values())
        assert total <= self.params.budget, (total, self.params.budget)

    def state_dict(self):
        return {"memory": {t: (a.copy(), b.copy()) for t, (a, b) in self.memory.items()}}

    def load_state_dict(self, state):
        self.memory = {t: (np.asarray(a), np.asarray(b)) for t, (a, b) in state.get("memory", {}).items()}
