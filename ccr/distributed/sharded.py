"""The driver's side of sharded galleries: `ShardedGallery` has the interface of `ccr.index.gallery.Gallery`, so
indexing policies run unchanged on top of shard actors (ccr.distributed.shards); queries fan out to every shard
and per-shard top-k merge into the global top-k (largest scores first, ties by smaller id). `ShardedGalleries` is
the backend a study is handed when resources.shards > 1."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from ccr.config.schema import Config, IndexConfig
from ccr.distributed.shards import ShardPool
from ccr.index.backend import Galleries
from ccr.index.gallery import MODALITIES, IndexState
from ccr.index.search import merge_topk, overlap_at_k, train_template
from ccr.io.storage import Storage


def shard_of(ids: np.ndarray, n: int) -> np.ndarray:
    """Stable shard of each global id (Fibonacci hashing: spreads consecutive ids, same on every run)."""
    h = (np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (h % np.uint64(n)).astype(np.int64)


class ShardedGallery:
    """Driver-side view of one gallery spread over a ShardPool (the interface of ccr.index.gallery.Gallery)."""

    def __init__(self, ns: str, modality: str, pool: ShardPool):
        self.ns, self.modality, self.pool = ns, modality, pool
        self.cfg = pool.cfg.index
        self.manifest: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (sorted ids, versions)
        self.quality: list[float] = []
        self.trainings: list[dict[str, float]] = []
        self.template_sent = False

    def tasks(self) -> list[str]:
        return list(self.manifest)

    def ids(self, task: str) -> np.ndarray:
        return self.manifest[task][0]

    def versions(self, task: str) -> np.ndarray:
        return self.manifest[task][1]

    def _split(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        owner = shard_of(ids, self.pool.n)
        return {i: ids[owner == i] for i in range(self.pool.n)}

    def embed(self, task: str, ids: np.ndarray, version: int, embedder=None) -> None:
        ids = np.asarray(ids, np.int64)
        streamed = getattr(embedder, "remote", None)
        far = streamed.covers(self.modality, ids) if streamed is not None else np.zeros(len(ids), bool)
        if far.any():  # distractors: embedded by the pool, their vectors sent to the shards that own them
            vectors = embedder.embed(self.modality, ids[far])
            owner = shard_of(ids[far], self.pool.n)
            self.pool.call({i: ("put", self.ns, task, ids[far][owner == i], ray.put(vectors[owner == i]), version)
                            for i in range(self.pool.n)})
        parts = self._split(ids[~far])
        self.pool.call({i: ("embed", self.ns, task, part, version) for i, part in parts.items()})
        if task not in self.manifest:
            order = np.argsort(ids)
            self.manifest[task] = (ids[order], np.full(len(ids), version, np.int64))
        else:
            all_ids, ver = self.manifest[task]
            ver = ver.copy()
            ver[np.searchsorted(all_ids, ids)] = version
            self.manifest[task] = (all_ids, ver)

    def apply_map(self, task: str, mat: np.ndarray) -> None:
        self.pool.call_all("apply_map", self.ns, task, mat)

    def movement(self, task: str, mat: np.ndarray) -> np.ndarray:
        res = self.pool.call_all("movement", self.ns, task, mat)
        ids = np.concatenate([r[0] for r in res])
        moved = np.concatenate([r[1] for r in res])
        out = np.empty(len(ids))
        out[np.searchsorted(self.ids(task), ids)] = moved
        return out

    @property
    def build_seconds(self) -> float:
        """Device-seconds of index building: every shard's (they build in parallel, each on its own device) and the
        template's training here. A shard rebuilt by recovery starts again from 0: its rebuild is not counted."""
        shards = self.pool.call_all("build_seconds", self.ns, journal=False)
        return float(sum(shards)) + sum(t["seconds"] for t in self.trainings)

    def retrain_template(self) -> None:
        """Train the approximate index again at the next search (ccr.index.gallery.Gallery.retrain_template)."""
        self.template_sent = False

    def _search(self, queries: np.ndarray, k: int, tasks: list[str], approx: bool):
        q = ray.put(np.ascontiguousarray(queries, np.float32))
        return merge_topk(self.pool.call_all("search", self.ns, q, k, tasks, approx, journal=False), k)

    def search(self, queries: np.ndarray, k: int, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.approx == "none":
            return self._search(queries, k, tasks, False)
        if not self.template_sent:  # trained once on a sample from every shard, shared by all shards
            import faiss

            t0 = time.perf_counter()
            sample = np.concatenate(self.pool.call_all("sample", self.ns, self.tasks(), 20000 // self.pool.n + 1,
                                                       journal=False))
            template, sizes = train_template(self.cfg, sample)
            blob = faiss.serialize_index(template)
            self.trainings.append({"vectors": len(sample), "seconds": round(time.perf_counter() - t0, 4), **sizes})
            self.pool.call_all("set_template", self.ns, blob)
            self.template_sent = True
        res = self._search(queries, k, tasks, True)
        exact = self._search(queries, 10, tasks, False)
        self.quality.append(overlap_at_k(self._search(queries, 10, tasks, True)[1], exact[1], 10))
        return res

    def entries(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.state_dict()[task]
        return p["ids"], p["emb"], p["version"]

    def state_dict(self) -> dict[str, Any]:
        """The same layout as Gallery.state_dict: checkpoints do not depend on the shard count.

        One fetch of this gallery's entries from each shard, merged per task in id order.
        """
        shards = self.pool.call_all("parts", self.ns, journal=False)
        out = {}
        for t in self.manifest:
            held = [p[t] for p in shards if t in p]
            ids = np.concatenate([h["ids"] for h in held])
            order = np.argsort(ids)
            out[t] = {"ids": ids[order], "emb": np.concatenate([h["emb"] for h in held])[order],
                      "version": np.concatenate([h["version"] for h in held])[order]}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        per_shard: dict[int, dict[str, Any]] = {i: {} for i in range(self.pool.n)}
        for t, p in state.items():
            owner = shard_of(p["ids"], self.pool.n)
            for i in range(self.pool.n):
                m = owner == i
                per_shard[i][t] = {"ids": p["ids"][m], "emb": p["emb"][m], "version": p["version"][m]}
            self.manifest[t] = (np.asarray(p["ids"]), np.asarray(p["version"]))
        self.pool.call({i: ("load", {self.ns: parts}) for i, parts in per_shard.items()})


class ShardedGalleries(Galleries):
    """Every policy's galleries on one pool of shard actors (resources.shards of them)."""

    sharded = True

    def __init__(self, pool: ShardPool):
        self.pool = pool

    @classmethod
    def start(cls, cfg: Config, tokenizer: Storage) -> ShardedGalleries:
        """Start the pool (its actors check their inputs before task 1 trains); `tokenizer`: the study's, in
        storage, since the actors embed on other nodes."""
        return cls(ShardPool(cfg, tokenizer))

    def make_state(self, namespace: str, icfg: IndexConfig, device: str) -> IndexState:
        return IndexState({m: ShardedGallery(f"{namespace}/{m}", m, self.pool) for m in MODALITIES})

    def hold(self, ds, tokens, ids: dict[str, np.ndarray]) -> None:
        """Each shard its own items only: the images and captions whose ids hash to it (ccr.data.owned)."""
        from ccr.data.owned import OwnedItems

        super().hold(ds, tokens, ids)
        owner = {m: shard_of(v, self.pool.n) for m, v in ids.items()}
        self.pool.hold([OwnedItems.of(ds.images, tokens, ids["images"][owner["images"] == i],
                                      ids["captions"][owner["captions"] == i]) for i in range(self.pool.n)])

    def before_index(self, step: int, embedder) -> None:
        self.pool.set_model(step, embedder.model.state_dict())

    def after_step(self, step: int) -> None:
        self.pool.compact()

    def save_snapshots(self, states: dict[str, IndexState], folder: Storage, label: str, step: int) -> None:
        self.pool.save_snapshot(folder.child(label), step)

    def close(self) -> None:
        self.pool.shutdown()
