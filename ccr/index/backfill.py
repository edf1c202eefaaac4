"""The backfill curve: how much of the old gallery must be re-embedded to get recall back.

After step s the old gallery holds each item as embedded when its task was learned (what `no_reindex`
keeps) and the new model θ_s could re-embed any of it (what `reindex` does for all of it). For a fraction
f of the old items, taken in a given order, the curve is the recall over the seen tasks when those items
carry θ_s's embedding and the rest their old one. It reuses embeddings the study already holds (the old
ones, kept since each task was learned, and θ_s's, which the queries need anyway), so it needs no
retraining and no extra forward pass; at f = 0 it is `no_reindex`'s row, at f = 1 `reindex`'s.

Orders (which old items are re-embedded first):
- `oldest`: by the step that embedded them, then by id (what a backfill job walking the gallery does);
- `random`: a seeded permutation (the baseline any order must beat);
- `drift`: the largest predicted movement first, from a linear map fitted between the previous and the new
  model on the new task's training items (as `index.backfill_order: drift`), applied to the old embeddings;
- `ambiguity`: the old embeddings closest to another gallery item first. FastFill (Jaeckle et al., ICLR
  2023) backfills the items whose old embeddings are most uncertain first, with an uncertainty its
  transformation learns to predict; RACT (Zhang et al., ICLR 2022) also proposes uncertainty-based
  backfilling. ccr trains no such estimator, so it uses a label-free proxy in their spirit: an item whose
  old embedding has a near neighbour in the gallery is the one a query is most likely to confuse.
"""

from __future__ import annotations

import math

import numpy as np

from ccr.index.gallery import apply_map
from ccr.index.search import FlatIndex


def ambiguity(emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each entry's highest cosine to another entry of the same gallery (aligned with `emb`)."""
    if len(emb) < 2:
        return np.zeros(len(emb), np.float32)
    scores, found = FlatIndex(emb, ids).search(emb, 2)
    # the best match is normally the entry itself; where a duplicate outranks it, the other one counts
    return np.where(found[:, 0] == ids, scores[:, 1], scores[:, 0]).astype(np.float32)


def backfill_rank(order: str, ids: np.ndarray, version: np.ndarray, old_emb: np.ndarray,
                  rng: np.random.Generator, drift_map: np.ndarray | None = None) -> np.ndarray:
    """Positions of the old entries (ids, the step that embedded each, their old embeddings), first to
    re-embed first. Ties break by id, so a rank is deterministic."""
    if order == "oldest":
        return np.lexsort((ids, version))
    if order == "random":
        return rng.permutation(len(ids))
    if order == "drift":
        if drift_map is None:
            raise ValueError("the drift order needs the map fitted between the previous and the new model")
        moved = np.linalg.norm(apply_map(old_emb, drift_map) - old_emb, axis=1)
        return np.lexsort((ids, -moved))
    if order == "ambiguity":
        return np.lexsort((ids, -ambiguity(old_emb, ids)))
    raise ValueError(f"unknown backfill order {order!r}")


def chosen(n_old: int, fraction: float) -> int:
    """How many of `n_old` entries a fraction re-embeds (rounded up, as index.backfill_budget does)."""
    return min(n_old, math.ceil(fraction * n_old - 1e-9))
