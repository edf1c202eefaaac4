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

import numpy as np

from ccr.data.dataset import RetrievalDataset
from ccr.metrics import recall_at_k
from ccr.search import FlatIndex

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
    stability = {m: float(np.mean(np.sum(learned[m] * current[m], axis=1))) for m in ("images", "captions")}
    return {"grid": grid, "stability": stability,
            "alignment": alignment(ds, img_ids, cap_ids, current["images"], current["captions"])}
