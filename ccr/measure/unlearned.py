"""Tasks measured with no indexing policy: θ0 on every task before task 1 (the zero-shot row), tasks not
learned yet after each step (eval.transfer: what ZSCL's Transfer and Avg. read) and tasks never learned (eval.control).

Both sides are embedded with the current model, and the gallery is the one the task would be searched in
once learned: its own items in `task` scope; in `seen` scope, the order's tasks up to it; control tasks: all
control tasks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ccr.config.schema import Config
from ccr.data.dataset import RetrievalDataset
from ccr.measure import results
from ccr.measure.metrics import DIRECTIONS
from ccr.measure.query import gallery_tasks, recall_direct
from ccr.models.embed import Embedder

log = logging.getLogger(__name__)


class UnlearnedRows:
    """The zero-shot row {split: {direction: {K: (n,)}}}, transfer {direction: {K: (n, n)}} (task i after step
    s < i) and control {direction: {K: (n + 1, controls)}} (row 0 at θ0, row s + 1 after step s)."""

    def __init__(self, cfg: Config, ds: RetrievalDataset, order: list[str], search_device: str, has_val: bool):
        self.cfg, self.ds, self.order, self.search_device, self.has_val = cfg, ds, order, search_device, has_val
        n, ks = len(order), cfg.eval.ks
        self.zero_shot: dict[str, dict[str, dict[int, np.ndarray]]] | None = None
        self.transfer = {d: {k: np.full((n, n), np.nan) for k in ks} for d in DIRECTIONS} \
            if cfg.eval.transfer else None
        self.control = {d: {k: np.full((n + 1, len(cfg.eval.control)), np.nan) for k in ks} for d in DIRECTIONS} \
            if cfg.eval.control else None

    def _direct(self, embedder: Embedder, task: str, gallery: list[str], split: str = "test"
                ) -> dict[str, dict[int, float]]:
        return recall_direct(embedder, self.ds, task, gallery, self.cfg.eval.ks, split, self.cfg.index.backend,
                             self.search_device)

    def _unlearned(self, embedder: Embedder, i: int, split: str = "test") -> dict[str, dict[int, float]]:
        """Task order[i] evaluated with `embedder`'s model on both sides, in the gallery it will have."""
        task = self.order[i]
        return self._direct(embedder, task, gallery_tasks(task, self.order[: i + 1], self.cfg.eval.scope), split)

    def _control_row(self, row: int, embedder: Embedder) -> None:
        tasks = self.cfg.eval.control
        for j, t in enumerate(tasks):
            r = self._direct(embedder, t, gallery_tasks(t, tasks, self.cfg.eval.scope))
            for d in DIRECTIONS:
                for k in self.cfg.eval.ks:
                    self.control[d][k][row, j] = r[d][k]

    def before_sequence(self, embedder: Embedder) -> None:
        """θ0 on every task (test, and val where measured) and on control data, before task 1 trains."""
        n, ks = len(self.order), self.cfg.eval.ks
        self.zero_shot = {}
        for split in ("test", "val") if self.has_val else ("test",):
            row = {d: {k: np.full(n, np.nan) for k in ks} for d in DIRECTIONS}
            for i in range(n):
                r = self._unlearned(embedder, i, split)
                for d in DIRECTIONS:
                    for k in ks:
                        row[d][k][i] = r[d][k]
            self.zero_shot[split] = row
        k = min(ks)
        log.info("zero-shot (θ0, before task 1): t2i R@%d %s", k,
                 ", ".join(f"{t} {v:.1f}" for t, v in zip(self.order, self.zero_shot["test"]["t2i"][k], strict=True)))
        if self.control is not None:
            self._control_row(0, embedder)

    def after_step(self, step: int, embedder: Embedder) -> None:
        """The tasks after `step` (transfer) and the control tasks, with θ_step."""
        if self.transfer is not None:
            for i in range(step + 1, len(self.order)):
                r = self._unlearned(embedder, i)
                for d in DIRECTIONS:
                    for k in self.cfg.eval.ks:
                        self.transfer[d][k][step, i] = r[d][k]
        if self.control is not None:
            self._control_row(step + 1, embedder)

    def state_dict(self) -> dict[str, Any]:
        return {"zero_shot": self.zero_shot, "transfer": self.transfer, "control": self.control}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.zero_shot = state.get("zero_shot")
        for key in ("transfer", "control"):  # kept only when this study measures them too
            if getattr(self, key) is not None and state.get(key) is not None:
                setattr(self, key, state[key])

    def results(self, upto: int) -> dict[str, Any]:
        """results.json's `zero_shot`, `transfer` and `control` (None where not measured) and their metrics."""
        return results.initial_results(self.zero_shot, self.transfer, self.control, self.cfg.eval.control,
                                       upto, self.cfg.eval.scope)
