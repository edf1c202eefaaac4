"""Indexing policies, registered by name: what happens to gallery entries of earlier tasks once the
model changes. `reindex` and `no_reindex` (the two the paper compares), one-sided re-indexing,
budgeted backfill and learned drift compensation. Each counts every embedding it computes (fitting
included), so policies compare on quality *and* compute. The registry lives here, with what it
registers; `ccr.index.gallery` (galleries) knows nothing of policies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ccr import seeds
from ccr.config.plugins import claim_name
from ccr.errors import ConfigError
from ccr.index.backfill import backfill_rank
from ccr.index.gallery import MODALITIES, IndexState
from ccr.seeds import task_seed

if TYPE_CHECKING:
    from ccr.config.schema import IndexConfig
    from ccr.models.embed import Embedder

@dataclass
class StepInput:
    """What a policy sees at step `step` (task order[step] just learned, model θ_step)."""

    step: int
    order: list[str]
    embedder: Embedder  # embeds with θ_step, counting nothing itself
    test_ids: dict[str, dict[str, np.ndarray]]  # task -> modality -> gallery item ids
    prev_embedder: Embedder | None = None  # θ_{step-1}, for policies that declare needs_previous_model
    fit_ids: dict[str, np.ndarray] | None = None  # modality -> training items of the new task
    seed: int = 0  # the study's seed, for policies that draw (backfill in random order)
    # gallery parts of no task (eval.distractors): added with task 1, old items from then on
    standing: tuple[str, ...] = ()

    def old_parts(self) -> list[str]:
        """The gallery parts embedded before this step: distractors, then the earlier tasks in order."""
        return [*self.standing, *self.order[: self.step]] if self.step else []


POLICIES: dict[str, type[IndexPolicy]] = {}


def register_policy(cls: type[IndexPolicy]) -> type[IndexPolicy]:
    """Class decorator: make a policy usable by name (not one of ccr's own, unless `replaces_builtin = True`)."""
    claim_name("indexing policy", cls.name, cls, POLICIES, "index.policy")
    POLICIES[cls.name] = cls
    return cls


class IndexPolicy:
    """Decides which gallery entries are (re-)embedded after each task. Subclasses set `name`."""

    name: ClassVar[str] = ""
    replaces_builtin: ClassVar[bool] = False  # a plugin's class may take the name of one of ccr's own
    needs_previous_model: ClassVar[bool] = False

    def __init__(self, cfg: IndexConfig):
        self.cfg = cfg

    def embed_entries(self, state: IndexState, inp: StepInput, modality: str, task: str, ids: np.ndarray,
                      counts: dict[str, int]) -> None:
        """(Re-)embed gallery entries `ids` of `task` with θ_step, counting them: what `update_old` calls for
        every entry it refreshes (ccr.api)."""
        counts[modality] += len(ids)
        state.galleries[modality].embed(task, ids, inp.step, inp.embedder)

    _embed = embed_entries

    def _fit_embed(self, inp: StepInput, modality: str, ids: np.ndarray, counts: dict[str, int],
                   previous: bool) -> np.ndarray:
        """Embeddings computed to fit a drift map (not gallery entries), counted all the same."""
        counts[modality] += len(ids)
        return (inp.prev_embedder if previous else inp.embedder).embed(modality, ids)

    def _add_new_task(self, state: IndexState, inp: StepInput, counts: dict[str, int]) -> None:
        for part in [inp.order[inp.step], *(inp.standing if inp.step == 0 else ())]:
            for m in MODALITIES:
                self._embed(state, inp, m, part, inp.test_ids[part][m], counts)

    def _reembed_old(self, state: IndexState, inp: StepInput, modality: str, counts: dict[str, int]) -> None:
        g = state.galleries[modality]
        for part in inp.old_parts():
            self._embed(state, inp, modality, part, g.ids(part), counts)

    def update(self, state: IndexState, inp: StepInput) -> dict[str, int]:
        t0 = time.perf_counter()
        counts = {m: 0 for m in MODALITIES}
        self._add_new_task(state, inp, counts)
        self.update_old(state, inp, counts)
        if self.cfg.approx != "none" and inp.step > 0:
            for m in MODALITIES:
                g = state.galleries[m]
                everything = counts[m] >= sum(len(g.ids(t)) for t in g.tasks())  # every entry in θ_step's space
                if self.cfg.approx_retrain == "always" or (self.cfg.approx_retrain == "reindexed" and everything):
                    g.retrain_template()
        for m in MODALITIES:
            state.cost[m] += counts[m]
        # seconds of this step's indexing (embedding shared within a step is counted where first done)
        state.cost_per_step.append({**counts, "seconds": round(time.perf_counter() - t0, 4)})
        return counts

    def update_old(self, state: IndexState, inp: StepInput, counts: dict[str, int]) -> None:
        """What to do with entries of earlier tasks (default: nothing)."""


@register_policy
class Reindex(IndexPolicy):
    """Re-embed every seen task's gallery with the newest model (the usual default)."""

    name = "reindex"

    def update_old(self, state, inp, counts):
        for m in MODALITIES:
            self._reembed_old(state, inp, m, counts)


@register_policy
class NoReindex(IndexPolicy):
    """Keep each entry as embedded when its task was learned (Wang et al. 2021's remedy)."""

    name = "no_reindex"


def check_policy_names(names: list[str]) -> None:
    """Unknown or repeated policy names (index.policy, then index.compare) -> ConfigError."""
    valid = ", ".join(sorted(POLICIES))
    for i, n in enumerate(names):
        key = "index.policy" if i == 0 else "index.compare"
        if n not in POLICIES:
            raise ConfigError(f"config key '{key}': unknown indexing policy {n!r} (valid: {valid})")
    if len(set(names)) != len(names):
        raise ConfigError(f"index.policy and index.compare name a policy twice: {names}")


def build_policy(name: str, cfg: IndexConfig) -> IndexPolicy:
    return POLICIES[name](cfg)

@register_policy
class ReindexImages(IndexPolicy):
    """Re-embed only the image gallery (text->image stays consistent; captions keep old embeddings)."""

    name = "reindex_images"

    def update_old(self, state, inp, counts):
        self._reembed_old(state, inp, "images", counts)


@register_policy
class ReindexCaptions(IndexPolicy):
    """Re-embed only the caption gallery."""

    name = "reindex_captions"

    def update_old(self, state, inp, counts):
        self._reembed_old(state, inp, "captions", counts)


def fit_linear_map(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge least squares M (d, d) with x @ M ≈ y: the drift of one modality's embeddings."""
    d = x.shape[1]
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return np.linalg.solve(x64.T @ x64 + ridge * len(x) * np.eye(d), x64.T @ y64).astype(np.float32)


class _FitsDrift(IndexPolicy):
    def _fit(self, state: IndexState, inp: StepInput, modality: str, counts: dict[str, int]) -> np.ndarray:
        ids = inp.fit_ids[modality]
        x = self._fit_embed(inp, modality, ids, counts, previous=True)
        y = self._fit_embed(inp, modality, ids, counts, previous=False)
        return fit_linear_map(x, y, self.cfg.drift_map_ridge)


@register_policy
class DriftMap(_FitsDrift):
    """No re-embedding: a linear map from θ_{s-1}'s space to θ_s's, fitted on the new task's training
    items embedded by both models, is applied to every old entry (cost: the fitting embeddings)."""

    name = "drift_map"
    needs_previous_model = True

    def update_old(self, state, inp, counts):
        if inp.step == 0:
            return
        for m in MODALITIES:
            mat = self._fit(state, inp, m, counts)
            for part in inp.old_parts():
                state.galleries[m].apply_map(part, mat)


@register_policy
class Backfill(_FitsDrift):
    """Re-embed at most a budget of old entries per gallery and step (a fraction <= 1 of the old
    entries, or a count > 1), in index.backfill_order: the oldest first, a seeded random order, those a fitted
    drift map predicts moved most, or the most ambiguous old embeddings (ccr.index.backfill: the curve's orders)."""

    name = "backfill"

    @property
    def needs_previous_model(self) -> bool:  # type: ignore[override]
        return self.cfg.backfill_order == "drift"

    def budget(self, n_old: int) -> int:
        b = self.cfg.backfill_budget
        return min(n_old, math.ceil(b * n_old) if b <= 1 else int(b))

    def _rank(self, state: IndexState, inp: StepInput, m: str, old: list[str], ids: np.ndarray,
              counts: dict[str, int]) -> np.ndarray:
        """Positions of the old entries of gallery `m` (ids in task order), first to re-embed first."""
        g, order = state.galleries[m], self.cfg.backfill_order
        if order == "drift":  # the movement is computed where the entries live (shards too)
            mat = self._fit(state, inp, m, counts)
            return np.lexsort((ids, -np.concatenate([g.movement(t, mat) for t in old])))
        versions = np.concatenate([g.versions(t) for t in old])
        if order == "oldest":
            return np.lexsort((ids, versions))
        emb = np.concatenate([g.entries(t)[1] for t in old]) if order == "ambiguity" else None
        rng = np.random.default_rng(task_seed(inp.seed, inp.step, seeds.BACKFILL_POLICY + MODALITIES.index(m)))
        return backfill_rank(order, ids, versions, emb, rng)

    def update_old(self, state, inp, counts):
        if inp.step == 0:
            return
        old = inp.old_parts()
        for m in MODALITIES:
            g = state.galleries[m]
            task_of = np.concatenate([np.full(len(g.ids(t)), i) for i, t in enumerate(old)])
            ids = np.concatenate([g.ids(t) for t in old])
            pick = self._rank(state, inp, m, old, ids, counts)[: self.budget(len(ids))]
            for i, t in enumerate(old):
                chosen = np.sort(ids[pick[task_of[pick] == i]])
                if len(chosen):
                    self._embed(state, inp, m, t, chosen, counts)
