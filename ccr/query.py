"""The querying stage: queries of every seen task, embedded with the current model, searched in
the galleries as they stand, in the query's own task (`task` scope) or all seen tasks (`seen`)."""

from __future__ import annotations

import numpy as np

from ccr.data.dataset import RetrievalDataset
from ccr.embed import Embedder
from ccr.index import IndexState
from ccr.metrics import recall_at_k


def gallery_tasks(task: str, seen: list[str], scope: str) -> list[str]:
    if scope == "task":
        return [task]
    if scope == "seen":
        return list(seen)
    raise ValueError(f"unknown eval scope {scope!r} (task or seen)")


def evaluate_step(state: IndexState, embedder: Embedder, ds: RetrievalDataset, seen: list[str], scope: str,
                  ks: list[int], split: str = "test") -> dict[str, dict[str, dict[int, float]]]:
    """Recall of every seen task after the current step: {direction: {task: {K: percent}}}, querying the
    `split` items of each task against galleries that hold that split."""
    kmax = max(ks)
    out: dict[str, dict[str, dict[int, float]]] = {"i2t": {}, "t2i": {}}
    for task in seen:
        where = gallery_tasks(task, seen, scope)
        img_ids = ds.image_ids(task, split)
        cap_ids = ds.caption_ids(task, split)
        # image -> text: a hit when a retrieved caption belongs to the query image
        _, res = state.galleries["captions"].search(embedder.embed("images", img_ids), kmax, where)
        owner = np.where(res >= 0, ds.caption_image[np.clip(res, 0, None)], -1)
        out["i2t"][task] = recall_at_k(owner, img_ids, ks)
        # text -> image: a hit when the caption's own image is retrieved
        _, res = state.galleries["images"].search(embedder.embed("captions", cap_ids), kmax, where)
        out["t2i"][task] = recall_at_k(res, ds.caption_image[cap_ids], ks)
    return out
