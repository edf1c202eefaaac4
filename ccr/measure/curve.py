"""eval.backfill_curve: after each step, recall over the seen tasks when a fraction of the old gallery is
re-embedded by θ_step and the rest keeps the embeddings it had when its task was learned, in every order of
eval.backfill_orders (ccr.index.backfill). Exact search, in the study's scope; nothing is retrained."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ccr import seeds
from ccr.config.schema import Config
from ccr.data.dataset import RetrievalDataset
from ccr.index.backfill import backfill_rank, chosen
from ccr.index.gallery import MODALITIES, IndexState
from ccr.index.policies import fit_linear_map
from ccr.measure.metrics import DIRECTIONS
from ccr.measure.query import evaluate_step
from ccr.models.embed import Embedder
from ccr.seeds import task_seed

# ids, the step that embedded each, its part (in old_parts order), old and new embeddings
Pool = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class BackfillCurve:
    """The curve's rows {step, order, fraction, direction, k, recall, images, captions, old_*}, one per point."""

    def __init__(self, cfg: Config, ds: RetrievalDataset, order: list[str], test_ids: dict[str, dict[str, np.ndarray]],
                 search_device: str, standing: tuple[str, ...] = ()):
        self.cfg, self.ds, self.order, self.test_ids, self.search_device = cfg, ds, order, test_ids, search_device
        self.standing = standing  # distractors: embedded with task 1, old items after it
        self.rows: list[dict[str, Any]] = []

    def old_parts(self, step: int) -> list[str]:
        """The parts old at `step` (as a policy's StepInput.old_parts): distractors, then earlier tasks."""
        return [*self.standing, *self.order[:step]] if step else []

    def _pools(self, step: int, embedder: Embedder, learned: dict[str, dict[str, np.ndarray]]
               ) -> dict[str, Pool | None]:
        """Per modality, the old parts' test items pooled in order (None before there is an old task)."""
        pools: dict[str, Pool | None] = {m: None for m in MODALITIES}
        old = self.old_parts(step)
        for m in MODALITIES if step else ():
            parts = []
            for j, t in enumerate(old):
                ids = np.asarray(self.test_ids[t][m], np.int64)
                o = np.argsort(ids, kind="stable")
                learned_at = self.order.index(t) if t in self.order else 0  # distractors: with task 1
                parts.append((ids[o], np.full(len(ids), learned_at), np.full(len(ids), j), learned[t][m][o],
                              embedder.embed(m, ids[o])))
            pools[m] = tuple(np.concatenate(x) for x in zip(*parts, strict=True))
        return pools

    def _ranks(self, step: int, o_i: int, order: str, pools: dict[str, Pool | None], embedder: Embedder,
               prev_embedder: Embedder | None, fit: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Per modality, the old items in the order `order` re-embeds them."""
        ranks = {}
        for m_i, m in enumerate(MODALITIES):
            if pools[m] is None:
                continue
            ids, ver, _, old_emb, _ = pools[m]
            mat = None
            if order == "drift" and fit is not None and prev_embedder is not None:
                mat = fit_linear_map(prev_embedder.embed(m, fit[m]), embedder.embed(m, fit[m]),
                                     self.cfg.index.drift_map_ridge)
            rng = np.random.default_rng(task_seed(self.cfg.seed, step, seeds.backfill_curve_salt(o_i, m_i)))
            ranks[m] = backfill_rank(order, ids, ver, old_emb, rng, mat)
        return ranks

    def _state(self, step: int, fraction: float, pools: dict[str, Pool | None], ranks: dict[str, np.ndarray],
               embedder: Embedder) -> tuple[IndexState, dict[str, int]]:
        """The galleries with `fraction` of the old items re-embedded (the first of `ranks`), and how many."""
        icfg = dataclasses.replace(self.cfg.index, approx="none")
        state, counts = IndexState.empty(icfg, self.search_device), {m: 0 for m in MODALITIES}
        for m in MODALITIES:
            g = state.galleries[m]
            for new in [self.order[step], *(self.standing if step == 0 else ())]:  # distractors with task 1
                g.put(new, self.test_ids[new][m], embedder.embed(m, self.test_ids[new][m]), step)
            if pools[m] is None:
                continue
            ids, ver, part, old_emb, new_emb = pools[m]
            pick = np.zeros(len(ids), bool)
            pick[ranks[m][: chosen(len(ids), fraction)]] = True
            counts[m] = int(pick.sum())
            emb = np.where(pick[:, None], new_emb, old_emb)
            version = np.where(pick, step, ver)
            for j, t in enumerate(self.old_parts(step)):
                sel = part == j
                g.put(t, ids[sel], emb[sel], version[sel])
        return state, counts

    def step(self, step: int, embedder: Embedder, prev_embedder: Embedder | None,
             fit: dict[str, np.ndarray] | None, learned: dict[str, dict[str, np.ndarray]]) -> None:
        """The curve after step `step`; `learned`: each seen task's test items as embedded when it was learned."""
        e, seen = self.cfg.eval, self.order[: step + 1]
        pools = self._pools(step, embedder, learned)
        n_old = {m: 0 if p is None else len(p[0]) for m, p in pools.items()}
        for o_i, order in enumerate(e.backfill_orders):
            ranks = self._ranks(step, o_i, order, pools, embedder, prev_embedder, fit)
            for f in e.backfill_curve:
                state, counts = self._state(step, f, pools, ranks, embedder)
                rows = evaluate_step(state, embedder, self.ds, seen, e.scope, e.ks, standing=self.standing)
                for d in DIRECTIONS:
                    for k in e.ks:
                        self.rows.append({"step": step, "order": order, "fraction": float(f), "direction": d,
                                          "k": k, "recall": float(np.mean([rows[d][t][k] for t in seen])),
                                          "images": counts["images"], "captions": counts["captions"],
                                          "old_images": n_old["images"], "old_captions": n_old["captions"]})

    def results(self, upto: int) -> list[dict[str, Any]] | None:
        """results.json's `backfill_curve` (None where not measured)."""
        return [r for r in self.rows if r["step"] < upto] if self.cfg.eval.backfill_curve else None
