"""Indexing policies beyond `reindex` / `no_reindex`: one-sided re-indexing, budgeted backfill,
and learned drift compensation. Each counts every embedding it computes (fitting included)."""

from __future__ import annotations

import math

import numpy as np

from ccr.index import MODALITIES, IndexPolicy, IndexState, StepInput, register_policy


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
            for task in inp.order[: inp.step]:
                state.galleries[m].apply_map(task, mat)


@register_policy
class Backfill(_FitsDrift):
    """Re-embed at most a budget of old entries per gallery and step (a fraction <= 1 of the old
    entries, or a count > 1): the oldest first, or those a fitted drift map predicts moved most."""

    name = "backfill"

    @property
    def needs_previous_model(self) -> bool:  # type: ignore[override]
        return self.cfg.backfill_order == "drift"

    def budget(self, n_old: int) -> int:
        b = self.cfg.backfill_budget
        return min(n_old, math.ceil(b * n_old) if b <= 1 else int(b))

    def update_old(self, state, inp, counts):
        if inp.step == 0:
            return
        old = inp.order[: inp.step]
        for m in MODALITIES:
            g = state.galleries[m]
            task_of = np.concatenate([np.full(len(g.ids(t)), i) for i, t in enumerate(old)])
            ids = np.concatenate([g.ids(t) for t in old])
            if self.cfg.backfill_order == "drift":
                mat = self._fit(state, inp, m, counts)
                moved = np.concatenate([g.movement(t, mat) for t in old])
                pick = np.lexsort((ids, -moved))
            else:
                pick = np.lexsort((ids, np.concatenate([g.versions(t) for t in old])))
            pick = pick[: self.budget(len(ids))]
            for i, t in enumerate(old):
                chosen = np.sort(ids[pick[task_of[pick] == i]])
                if len(chosen):
                    self._embed(state, inp, m, t, chosen, counts)
