"""The anatomy of forgetting: for each old task i after step s, which side of retrieval broke.

- compatibility grid: recall with queries by θ_a against galleries by θ_b, for
  (a, b) in {(s, i): what no_reindex sees, (s, s): what reindex sees, (i, i): as learned,
  (i, s): old queries against a re-indexed gallery} -- separating query-side from gallery-side damage;
- stability per modality: mean cosine between θ_i and θ_s embeddings of the same items (1 = they did not
  move; lower means more drift);
- alignment under θ_s: mean cosine of matching image-caption pairs minus that of non-matching ones.
All use the task's own gallery (task scope).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ccr.data.dataset import RetrievalDataset
from ccr.index.search import FlatIndex
from ccr.measure.metrics import DIRECTIONS, recall_at_k, to_json_matrix
from ccr.measure.results import RENAMED_ANATOMY

if TYPE_CHECKING:
    from ccr.models.embed import Embedder

MODALITIES = ("images", "captions")

# name -> (query model, gallery model); "s" = current, "i" = the model right after learning the task
COMBOS = {"new_q/old_g": ("s", "i"), "new_q/new_g": ("s", "s"), "old_q/old_g": ("i", "i"),
          "old_q/new_g": ("i", "s")}


def cross_recall(ds: RetrievalDataset, img_ids: np.ndarray, cap_ids: np.ndarray, q: dict[str, np.ndarray],
                 g: dict[str, np.ndarray], ks: list[int]) -> dict[str, dict[int, float]]:
    """Recall in both directions with query embeddings `q` and gallery embeddings `g` (task scope)."""
    kmax = max(ks)
    _, res = FlatIndex(g["captions"], cap_ids).search(q["images"], kmax)
    i2t = recall_at_k(np.where(res >= 0, ds.caption_image[np.clip(res, 0, None)], -1), img_ids, ks)
    _, res = FlatIndex(g["images"], img_ids).search(q["captions"], kmax)
    t2i = recall_at_k(res, ds.caption_image[cap_ids], ks)
    return {"i2t": i2t, "t2i": t2i}


def alignment(ds: RetrievalDataset, img_ids: np.ndarray, cap_ids: np.ndarray, img: np.ndarray,
              cap: np.ndarray) -> float:
    """Mean cosine of matching pairs minus mean cosine of non-matching pairs."""
    match = ds.caption_image[cap_ids][None, :] == img_ids[:, None]  # (n_img, n_cap)
    sims = img @ cap.T
    n_pos, n_neg = match.sum(), (~match).sum()
    pos = sims[match].sum() / max(1, n_pos)
    neg = sims[~match].sum() / max(1, n_neg)
    return float(pos - neg)


def anatomy_of_task(ds: RetrievalDataset, img_ids: np.ndarray, cap_ids: np.ndarray,
                    learned: dict[str, np.ndarray], current: dict[str, np.ndarray], ks: list[int]) -> dict:
    """All anatomy measures for one task: `learned` = embeddings by θ_i, `current` = by θ_s."""
    by = {"i": learned, "s": current}
    grid = {name: cross_recall(ds, img_ids, cap_ids, by[a], by[b], ks) for name, (a, b) in COMBOS.items()}
    stability = {m: float(np.mean(np.sum(learned[m] * current[m], axis=1))) for m in MODALITIES}
    return {"grid": grid, "stability": stability,
            "alignment": alignment(ds, img_ids, cap_ids, current["images"], current["captions"])}


class AnatomyRecord:
    """The anatomy of every seen task after every step, as (n, n) matrices: grid {combo: {direction: {K}}},
    stability {modality}, alignment, and stability since θ0 (when θ0's embeddings were kept)."""

    def __init__(self, ds: RetrievalDataset, order: list[str], ks: list[int],
                 test_ids: dict[str, dict[str, np.ndarray]]):
        self.ds, self.order, self.ks, self.test_ids = ds, order, ks, test_ids
        n = len(order)

        def nan() -> np.ndarray:
            return np.full((n, n), np.nan)

        self.matrices: dict[str, Any] = {
            "grid": {c: {d: {k: nan() for k in ks} for d in DIRECTIONS} for c in COMBOS},
            "stability": {m: nan() for m in MODALITIES}, "alignment": nan(),
            "stability_from_init": {m: nan() for m in MODALITIES}}
        self.initial: dict[str, dict[str, np.ndarray]] = {}  # θ0's test embeddings {task: {modality: (m, D)}}

    def before_sequence(self, embedder: Embedder) -> None:
        self.initial = {t: {m: embedder.embed(m, self.test_ids[t][m]) for m in MODALITIES} for t in self.order}

    def step(self, step: int, embedder: Embedder, learned: dict[str, dict[str, np.ndarray]]) -> None:
        """Row `step`: each seen task's items by θ_step against themselves as learned (`learned`)."""
        a_ = self.matrices
        for i, t in enumerate(self.order[: step + 1]):
            ids = self.test_ids[t]
            current = {m: embedder.embed(m, ids[m]) for m in MODALITIES}
            a = anatomy_of_task(self.ds, ids["images"], ids["captions"], learned[t], current, self.ks)
            for c in COMBOS:
                for d in DIRECTIONS:
                    for k in self.ks:
                        a_["grid"][c][d][k][step, i] = a["grid"][c][d][k]
            for m in MODALITIES:
                a_["stability"][m][step, i] = a["stability"][m]
            a_["alignment"][step, i] = a["alignment"]
            if t in self.initial:  # stability since θ0 (same measure: mean cosine of an item's two embeddings)
                for m in MODALITIES:
                    a_["stability_from_init"][m][step, i] = float(
                        np.mean(np.sum(self.initial[t][m] * current[m], axis=1)))

    def state_dict(self) -> dict[str, Any]:
        return {"anatomy": self.matrices, "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a checkpoint of an earlier ccr names stability "drift" and may lack it since θ0
        self.matrices = {**self.matrices, **{RENAMED_ANATOMY.get(k, k): v for k, v in state["anatomy"].items()}}
        self.initial = state.get("initial", {})

    def results(self, upto: int) -> dict[str, Any]:
        def cut(m: np.ndarray) -> list:
            return to_json_matrix(m[:upto, :upto])

        a = self.matrices
        out = {
            "scope": "task",
            "grid": {c: {d: {str(k): cut(m) for k, m in by_k.items()} for d, by_k in g.items()}
                     for c, g in a["grid"].items()},
            "stability": {m: cut(v) for m, v in a["stability"].items()},
            "alignment": cut(a["alignment"]),
        }
        if self.initial:
            out["stability_from_init"] = {m: cut(v) for m, v in a["stability_from_init"].items()}
        return out
