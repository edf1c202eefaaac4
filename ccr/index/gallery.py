"""Galleries and indexing policies.

Two galleries (images for text->image, captions for image->text) hold, per task, the embedding of
every test item, its global id and the model version (task step) that embedded it. A policy
decides what happens to entries of earlier tasks once the model changes, and counts the
embeddings it computes, so policies compare on quality *and* compute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ccr.data.owned import positions
from ccr.index.search import ApproxIndex, FlatIndex, merge_topk, overlap_at_k, train_template

if TYPE_CHECKING:
    from ccr.config.schema import IndexConfig
    from ccr.models.embed import Embedder

log = logging.getLogger(__name__)
MODALITIES = ("images", "captions")


@dataclass
class Part:
    """The entries of one task in one gallery."""

    ids: np.ndarray  # (n,) global item ids, ascending
    emb: np.ndarray  # (n, d) float32, unit norm
    version: np.ndarray  # (n,) int: the task step whose model embedded the entry
    index: FlatIndex | None = None
    approx: ApproxIndex | None = None


class Gallery:
    """One modality's gallery, split by task; exact inner-product search over any set of tasks.

    Policies talk to a gallery only through `embed`, `apply_map`, `movement`, `ids`/`versions` and
    `search`, so a sharded gallery (ccr.distributed.shards) can stand in for this local one.
    """

    def __init__(self, modality: str, cfg: IndexConfig, device: str = "cpu"):
        self.cfg = cfg
        self.modality, self.backend, self.device = modality, self.cfg.backend, device
        self.parts: dict[str, Part] = {}
        self.template = None  # the trained, empty approximate index every part clones
        self.quality: list[float] = []  # recall@10 of approximate vs exact search, per search call
        self.trainings: list[dict[str, float]] = []  # each training of the template: vectors, seconds
        # seconds spent building the index that answers (template training, adding vectors): the index's share of
        # the cost of a policy. An approximate gallery's flat indexes only measure it and are not counted.
        self.build_seconds = 0.0

    def tasks(self) -> list[str]:
        return list(self.parts)

    def ids(self, task: str) -> np.ndarray:
        return self.parts[task].ids

    def versions(self, task: str) -> np.ndarray:
        return self.parts[task].version

    def entries(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.parts[task]
        return p.ids, p.emb, p.version

    def put(self, task: str, ids: np.ndarray, emb: np.ndarray, version: int | np.ndarray) -> None:
        v = np.broadcast_to(np.asarray(version, dtype=np.int64), (len(ids),)).copy()
        order = np.argsort(ids, kind="stable")
        self.parts[task] = Part(np.asarray(ids, np.int64)[order], np.asarray(emb, np.float32)[order].copy(), v[order])

    def embed(self, task: str, ids: np.ndarray, version: int, embedder: Embedder) -> None:
        """(Re-)embed entries `ids` of `task` with model `version` (new task: all its entries)."""
        ids = np.asarray(ids, np.int64)
        self.set_entries(task, ids, embedder.embed(self.modality, ids), version)

    def set_entries(self, task: str, ids: np.ndarray, emb: np.ndarray, version: int) -> None:
        """Entries `ids` of `task` as embedded by model `version` (a new task: all its entries)."""
        ids = np.asarray(ids, np.int64)
        if task not in self.parts:
            self.put(task, ids, emb, version)
            return
        p = self.parts[task]
        rows, known = positions(p.ids, ids)
        if not known.all():
            raise KeyError(f"gallery {self.modality}/{task}: re-embedding ids that are not entries: {ids[~known][:5]}")
        p.emb[rows] = emb
        p.version[rows] = version
        p.index = p.approx = None

    def apply_map(self, task: str, mat: np.ndarray) -> None:
        """Move every entry of `task` through a linear map (then renormalise): drift compensation."""
        p = self.parts[task]
        p.emb[:] = apply_map(p.emb, mat)
        p.index = p.approx = None

    def movement(self, task: str, mat: np.ndarray) -> np.ndarray:
        """How far each entry would move under `mat` (aligned with ids(task))."""
        p = self.parts[task]
        return np.linalg.norm(apply_map(p.emb, mat) - p.emb, axis=1)

    def search_exact(self, queries: np.ndarray, k: int, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        results = []
        for t in tasks:
            p = self.parts[t]
            if p.index is None:
                t0 = time.perf_counter()
                p.index = FlatIndex(p.emb, p.ids, self.backend, self.device)
                if self.cfg.approx == "none":
                    self.build_seconds += time.perf_counter() - t0
            results.append(p.index.search(queries, k))
        return results[0] if len(results) == 1 else merge_topk(results, k)

    def sample(self, tasks: list[str], n: int = 20000) -> np.ndarray:
        emb = np.concatenate([self.parts[t].emb for t in tasks])
        return emb[np.random.default_rng(0).permutation(len(emb))[:n]]

    def retrain_template(self) -> None:
        """Train the approximate index again at the next search, on the entries as they stand then."""
        self.template = None
        for p in self.parts.values():
            p.approx = None

    def search_approx(self, queries: np.ndarray, k: int, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.template is None:  # trained on the gallery's entries at its first search (again after a retrain)
            t0 = time.perf_counter()
            sample = self.sample(self.tasks())
            self.template, sizes = train_template(self.cfg, sample)
            self.trainings.append({"vectors": len(sample), "seconds": round(time.perf_counter() - t0, 4), **sizes})
            self.build_seconds += time.perf_counter() - t0
        results = []
        for t in tasks:
            p = self.parts[t]
            if p.approx is None:
                t0 = time.perf_counter()
                p.approx = ApproxIndex(p.emb, p.ids, self.template, self.cfg.nprobe)
                self.build_seconds += time.perf_counter() - t0
            results.append(p.approx.search(queries, k))
        return results[0] if len(results) == 1 else merge_topk(results, k)

    def search(self, queries: np.ndarray, k: int, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the union of `tasks`' entries: (scores (nq, k), global ids (nq, k)).

        With `index.approx`, the approximate index answers and its recall@10 against exact search
        is recorded in `self.quality`.
        """
        if self.cfg.approx == "none":
            return self.search_exact(queries, k, tasks)
        res = self.search_approx(queries, k, tasks)
        exact = self.search_exact(queries, 10, tasks)
        self.quality.append(overlap_at_k(self.search_approx(queries, 10, tasks)[1], exact[1], 10))
        return res

    def state_dict(self) -> dict[str, Any]:
        return {t: {"ids": p.ids, "emb": p.emb, "version": p.version} for t, p in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parts = {t: Part(np.asarray(s["ids"]), np.asarray(s["emb"], np.float32).copy(),
                              np.asarray(s["version"]).copy()) for t, s in state.items()}


def apply_map(emb: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = emb @ m
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class IndexState:
    """Both galleries of one policy, and the embeddings that policy has computed so far."""

    galleries: dict[str, Gallery]
    cost: dict[str, int] = field(default_factory=lambda: {m: 0 for m in MODALITIES})
    cost_per_step: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def empty(cls, cfg: IndexConfig, device: str = "cpu") -> IndexState:
        return cls({m: Gallery(m, cfg, device) for m in MODALITIES})

    def quality(self) -> dict[str, float] | None:
        """Mean recall@10 of approximate against exact search, per gallery (None for exact search)."""
        q = {m: float(np.mean(g.quality)) for m, g in self.galleries.items() if getattr(g, "quality", None)}
        return q or None

    def state_dict(self) -> dict[str, Any]:
        return {"galleries": {m: g.state_dict() for m, g in self.galleries.items()},
                "cost": dict(self.cost), "cost_per_step": list(self.cost_per_step),
                "quality": {m: list(g.quality) for m, g in self.galleries.items()},
                "trainings": {m: list(g.trainings) for m, g in self.galleries.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, g in self.galleries.items():
            g.load_state_dict(state["galleries"][m])
            g.quality = list(state.get("quality", {}).get(m, []))
            g.trainings = list(state.get("trainings", {}).get(m, []))
        self.cost = dict(state["cost"])
        self.cost_per_step = list(state["cost_per_step"])

    def save_snapshot(self, folder: str | Path, step: int) -> None:
        """This state's galleries as a one-shard snapshot (the sharded index writes one file per shard)."""
        from ccr.index.snapshots import write_manifest, write_shard

        digest = write_shard(folder, 0, {m: g.state_dict() for m, g in self.galleries.items()})
        dim = next((p["emb"].shape[1] for g in self.galleries.values() for p in g.state_dict().values()), 0)
        write_manifest(folder, 1, dim, step, [digest])

    def load_snapshot(self, folder: str | Path, dim: int | None = None) -> None:
        from ccr.index.snapshots import SnapshotError, read_manifest, read_shard

        man = read_manifest(folder, n_shards=1, dim=dim)
        data = read_shard(folder, 0, man)
        if set(data) - set(self.galleries):
            raise SnapshotError(f"snapshot {folder} holds galleries {sorted(data)}, expected {sorted(self.galleries)}")
        for m, g in self.galleries.items():
            g.load_state_dict(data.get(m, {}))
