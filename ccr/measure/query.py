"""The querying stage: queries of every seen task, embedded with the current model, searched in
the galleries as they stand, in the query's own task (`task` scope) or all seen tasks (`seen`)."""

from __future__ import annotations

import numpy as np

from ccr.data.dataset import RetrievalDataset
from ccr.index.gallery import IndexState
from ccr.index.search import FlatIndex
from ccr.measure.classification import class_ranks, class_recall
from ccr.measure.metrics import first_hit, recall_at_k
from ccr.models.embed import Embedder


def gallery_tasks(task: str, seen: list[str], scope: str, standing: tuple[str, ...] = ()) -> list[str]:
    """The gallery parts a query of `task` searches: its own task's or every seen task's, and in either scope
    the parts of no task (`standing`: eval.distractors)."""
    if scope == "task":
        return [task, *standing]
    if scope == "seen":
        return [*seen, *standing]
    raise ValueError(f"unknown eval scope {scope!r} (task or seen)")


def evaluate_step(state: IndexState, embedder: Embedder, ds: RetrievalDataset, seen: list[str], scope: str,
                  ks: list[int], split: str = "test", ranks: dict[str, dict[str, np.ndarray]] | None = None,
                  standing: tuple[str, ...] = ()) -> dict[str, dict[str, dict[int, float]]]:
    """Recall of every seen task after the current step: {direction: {task: {K: percent}}}, querying the
    `split` items of each task against galleries that hold that split. `ranks`, when given, receives each
    query's first-hit rank {direction: {task: (nq,)}} (for negative flips). `standing`: gallery parts of no task
    (distractors), searched by every query and never queried."""
    kmax = max(ks)
    out: dict[str, dict[str, dict[int, float]]] = {"i2t": {}, "t2i": {}}
    for task in seen:
        if task in ds.classes:  # a classification task: top-K among its own classes, in both directions' cells
            r = class_ranks(embedder, ds, task, split)
            out["i2t"][task], out["t2i"][task] = class_recall(r, ks), class_recall(r, ks)
            if ranks is not None:
                ranks.setdefault("i2t", {})[task] = ranks.setdefault("t2i", {})[task] = r
            continue
        where = gallery_tasks(task, seen, scope, standing)
        img_ids = ds.image_ids(task, split)
        cap_ids = ds.caption_ids(task, split)
        # image -> text: a hit when a retrieved caption belongs to the query image
        _, res = state.galleries["captions"].search(embedder.embed("images", img_ids), kmax, where)
        owner = np.where(res >= 0, ds.caption_image[np.clip(res, 0, None)], -1)
        out["i2t"][task] = recall_at_k(owner, img_ids, ks)
        # text -> image: a hit when the caption's own image is retrieved
        _, res_t = state.galleries["images"].search(embedder.embed("captions", cap_ids), kmax, where)
        out["t2i"][task] = recall_at_k(res_t, ds.caption_image[cap_ids], ks)
        if ranks is not None:
            ranks.setdefault("i2t", {})[task] = first_hit(owner, img_ids)
            ranks.setdefault("t2i", {})[task] = first_hit(res_t, ds.caption_image[cap_ids])
    return out


def recall_direct(embedder: Embedder, ds: RetrievalDataset, task: str, gallery: list[str], ks: list[int],
                  split: str = "test", backend: str = "faiss", device: str = "cpu") -> dict[str, dict[int, float]]:
    """Recall of `task`'s `split` queries against `gallery` tasks' items, both sides embedded by `embedder`
    (no index policy: the evaluation of tasks not learned yet, θ0's zero-shot row, control data):
    {direction: {K: percent}}. Galleries are assembled per task, so each task is embedded once per model."""
    if task in ds.classes:  # a classification task: top-K among its own classes, whatever the gallery
        r = class_ranks(embedder, ds, task, split)
        return {"i2t": class_recall(r, ks), "t2i": class_recall(r, ks)}
    kmax = max(ks)
    img_ids, cap_ids = ds.image_ids(task, split), ds.caption_ids(task, split)
    g_caps = [ds.caption_ids(t, split) for t in gallery]
    g_imgs = [ds.image_ids(t, split) for t in gallery]
    caps = FlatIndex(np.concatenate([embedder.embed("captions", c) for c in g_caps]), np.concatenate(g_caps),
                     backend, device)
    imgs = FlatIndex(np.concatenate([embedder.embed("images", i) for i in g_imgs]), np.concatenate(g_imgs),
                     backend, device)
    _, res = caps.search(embedder.embed("images", img_ids), kmax)
    owner = np.where(res >= 0, ds.caption_image[np.clip(res, 0, None)], -1)
    _, res_t = imgs.search(embedder.embed("captions", cap_ids), kmax)
    return {"i2t": recall_at_k(owner, img_ids, ks), "t2i": recall_at_k(res_t, ds.caption_image[cap_ids], ks)}
