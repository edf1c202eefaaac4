"""Zero-shot classification (eval.classification): top-1 accuracy of the dual encoder on ImageFolder sets, at θ0
and after every task, as CLIP and ZSCL measure it.

A class's text embedding is the mean of its prompts' unit embeddings (one prompt per template), normalised
again (CLIP's `zeroshot_classifier`, ZSCL's zero-shot head); an image is assigned the class of highest cosine,
and top-1 is the % of images assigned their own class. The sets' images are decoded once per node with the
model's own preprocessing (ccr.data.imagefolder) before anything trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccr.config.prompts import ClassificationSet
from ccr.config.schema import Config
from ccr.data.dataset import ClassTask
from ccr.data.imagefolder import ImageFolder, decoded, read_imagefolder
from ccr.io.images import Pixels
from ccr.models.embed import Embedder

log = logging.getLogger(__name__)


@dataclass
class LoadedSet:
    """A classification set read and decoded: its images (an image store), labels and prompts."""

    spec: ClassificationSet
    folder: ImageFolder
    images: Any  # an image store (ccr.data.dataset.ImageStore)
    names: list[str]  # each class's display name

    @property
    def prompts(self) -> list[str]:
        """Every class's prompts, class-major (ccr.data.dataset.ClassTask.prompts)."""
        return ClassTask(self.names, list(self.spec.templates)).prompts


def load_sets(cfg: Config, pixels: Pixels) -> list[LoadedSet]:
    """Every eval.classification set listed, named and decoded: a missing folder, a folder without classes, a
    class without images, display names that do not fit and unreadable images are each one DataError, here,
    before training."""
    out = []
    for i, spec in enumerate(cfg.eval.classification):
        what = f"eval.classification[{i}] ({spec.name})"
        folder = read_imagefolder(spec.path, what, cfg.data.cache_dir)
        names = folder.display_names(spec.classes, what)
        out.append(LoadedSet(spec, folder, decoded(folder, pixels, cfg.data.cache_dir, cfg.data.num_workers), names))
        log.info("classification set %s: %d images of %d classes, %d prompt(s) each", spec.name,
                 len(folder.paths), len(names), len(spec.templates))
    return out


def class_heads(prompts: np.ndarray, n_classes: int) -> np.ndarray:
    """(C * T, D) unit prompt embeddings, class-major -> (C, D): each class's mean prompt, normalised."""
    heads = prompts.reshape(n_classes, -1, prompts.shape[1]).mean(axis=1)
    return heads / np.linalg.norm(heads, axis=1, keepdims=True)


def top1(embedder: Embedder, s: LoadedSet) -> float:
    """% of the set's images whose most similar class head is their own class's."""
    images = embedder.embed_store(s.images, f"classification/{s.spec.name}")
    heads = class_heads(embedder.embed_texts(s.prompts), len(s.names))
    return 100.0 * float(np.mean(ranks_among(images @ heads.T, s.folder.labels) == 0))


def class_ranks(embedder: Embedder, ds, task: str, split: str = "test") -> np.ndarray:
    """(n,) the 0-based rank of each `split` image of classification task `task` (data.kind=imagefolder)'s own
    class among the task's classes, ordered as argmax orders them (a tie goes to the lower class index): top-K
    accuracy is `rank < K`, the cell of its recall matrix, and a negative flip is a rank crossing K."""
    ct = ds.classes[task]
    ids = ds.image_ids(task, split)
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    scores = embedder.embed("images", ids) @ class_heads(embedder.embed_texts(ct.prompts), len(ct.names)).T
    return ranks_among(scores, ds.class_labels[ids])


def ranks_among(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) the 0-based rank of each row's own class (`labels`) in its (n, C) scores, ties to the lower class
    index as argmax breaks them: rank 0 exactly where argmax is the own class."""
    own = scores[np.arange(len(labels)), labels][:, None]
    before = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return ((scores > own) | ((scores == own) & before)).sum(1).astype(np.int64)


def class_recall(ranks: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Top-K accuracy (%) from class_ranks, for every K."""
    return {k: float(100.0 * np.mean(ranks < k)) if len(ranks) else float("nan") for k in ks}


class ClassificationRows:
    """Top-1 of every set, row 0 at θ0 and row s + 1 after step s: {name: (n + 1,)}."""

    def __init__(self, sets: list[LoadedSet], n_tasks: int):
        self.sets = sets
        self.top1 = {s.spec.name: np.full(n_tasks + 1, np.nan) for s in sets}

    def measure(self, row: int, embedder: Embedder) -> None:
        for s in self.sets:
            self.top1[s.spec.name][row] = top1(embedder, s)
        if self.sets:
            log.info("classification top-1 (%s): %s", "θ0" if row == 0 else f"after task {row}",
                     ", ".join(f"{n} {v[row]:.1f}" for n, v in self.top1.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"classification": self.top1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kept = state.get("classification") or {}
        self.top1 = {n: kept.get(n, v) for n, v in self.top1.items()}

    def results(self, upto: int) -> dict[str, Any]:
        """results.json's `classification` (None where no set is measured) and its metrics: top-1 after the last
        task done and retention (that, in % of θ0's)."""
        if not self.sets:
            return {"classification": None, "metrics": {}}
        part, metrics = {}, {}
        for s in self.sets:
            v = self.top1[s.spec.name][: upto + 1]
            part[s.spec.name] = {"top1": [None if np.isnan(x) else float(x) for x in v],
                                 "classes": len(s.names), "images": len(s.folder.paths),
                                 "templates": list(s.spec.templates)}
            first, last = v[0], v[-1]
            if not np.isnan(last):
                metrics[f"classification/{s.spec.name}/top1"] = float(last)
                if first > 0:
                    metrics[f"classification/{s.spec.name}/retention"] = 100.0 * float(last) / float(first)
        return {"classification": part, "metrics": metrics}
