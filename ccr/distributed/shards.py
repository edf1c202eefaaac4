"""Sharded galleries on Ray actors.

Each `GalleryShard` actor owns one shard of every gallery (items assigned by a stable hash of their
global id), receives the model of each step, embeds its own items, and holds its indexes. The
driver-side `ShardedGallery` has the interface of `ccr.index.Gallery`, so indexing policies run
unchanged on top; queries fan out to every shard and per-shard top-k merge into the global top-k
(largest scores first, ties by smaller id). Every operation sent to a shard is journaled; a lost
actor is restarted by Ray and rebuilt from the last snapshot plus the journal (or the journal alone),
so its answers are the same as before.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from ccr.config import Config, to_dict
from ccr.context import task_label
from ccr.distributed import check_can_ever_run, init_ray
from ccr.evaluation import Evaluator
from ccr.index import MODALITIES, IndexState
from ccr.search import merge_topk, overlap_at_k, train_template
from ccr.snapshots import read_manifest, read_shard, write_manifest, write_shard
from ccr.storage import Storage

log = logging.getLogger(__name__)


def shard_of(ids: np.ndarray, n: int) -> np.ndarray:
    """Stable shard of each global id (Fibonacci hashing: spreads consecutive ids, same on every run)."""
    h = (np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (h % np.uint64(n)).astype(np.int64)


@ray.remote(max_restarts=-1, max_task_retries=0)
class GalleryShard:
    """One shard of every gallery (keyed by namespace, e.g. 'reindex/images')."""

    def __init__(self, shard: int, cfg_dict: dict[str, Any], tokenizer: Storage, device: str):
        from ccr.configure import build_config
        from ccr.data import load_dataset
        from ccr.models import build_for
        from ccr.study import local_copy

        # Arrays that reach an actor through Ray's object store are read-only views (zero copy); the
        # shard only reads them, so torch's warning about tensors made from them is noise here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.shard = shard
        self.version: int | None = None
        self.embedder = None
        self.galleries: dict[str, Any] = {}
        self.problem: tuple[str, str, str] | None = None
        try:
            self.cfg: Config = build_config(cfg_dict)
            self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
            self.ds = load_dataset(self.cfg)  # staged on this actor's node (ccr.staging) when a URI
            # the tokenizer from storage: this actor may run on any node
            self.model, _, self.tokens = build_for(self.cfg, self.ds, local_copy(tokenizer), self.device)
            self.model.eval()
        except Exception as e:  # noqa: BLE001 - kept for ready(): the driver raises it, once, before task 1
            self.problem = (type(e).__name__, str(e).splitlines()[0][:600] if str(e) else repr(e),
                            ray.util.get_node_ip_address())

    def ready(self) -> tuple[str, str, str] | None:
        """None when this shard could read its inputs and build its model; else (error class, message, node)."""
        return self.problem

    def _gallery(self, ns: str):
        from ccr.index import Gallery

        if ns not in self.galleries:
            self.galleries[ns] = Gallery(ns.split("/")[-1], self.cfg.index, str(self.device))
        return self.galleries[ns]

    def pid(self) -> int:
        import os

        return os.getpid()

    def set_model(self, version: int, state: dict[str, torch.Tensor]) -> None:
        from ccr.embed import Embedder

        self.model.load_state_dict(state)
        self.version = version
        self.embedder = Embedder(self.model, self.ds, self.tokens, self.device, self.cfg.eval.batch_size,
                                 self.cfg.train.amp, workers=self.cfg.data.num_workers)

    def embed(self, ns: str, task: str, ids: np.ndarray, version: int) -> int:
        if self.version != version:
            raise RuntimeError(f"shard {self.shard} holds model {self.version}, asked to embed with {version}")
        self._gallery(ns).embed(task, ids, version, self.embedder)
        return len(ids)

    def apply_map(self, ns: str, task: str, mat: np.ndarray) -> None:
        self._gallery(ns).apply_map(task, mat)

    def movement(self, ns: str, task: str, mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self._gallery(ns)
        return g.ids(task), g.movement(task, mat)

    def sample(self, ns: str, tasks: list[str], n: int) -> np.ndarray:
        g = self._gallery(ns)
        have = [t for t in tasks if t in g.parts and len(g.ids(t))]
        return g.sample(have, n) if have else np.zeros((0, self.cfg.model.embed_dim), np.float32)

    def set_template(self, ns: str, blob: np.ndarray) -> None:
        import faiss

        g = self._gallery(ns)
        g.template = faiss.deserialize_index(blob)
        for p in g.parts.values():  # built with the previous template
            p.approx = None

    def search(self, ns: str, queries: np.ndarray, k: int, tasks: list[str], approx: bool
               ) -> tuple[np.ndarray, np.ndarray]:
        g = self._gallery(ns)
        have = [t for t in tasks if t in g.parts and len(g.ids(t))]
        if not have:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        return (g.search_approx if approx else g.search_exact)(queries, k, have)

    def state(self) -> dict[str, Any]:
        return {ns: g.state_dict() for ns, g in self.galleries.items()}

    def parts(self, ns: str) -> dict[str, Any]:
        """One namespace's entries ({task: {ids, emb, version}}), not the whole shard."""
        return self.galleries[ns].state_dict() if ns in self.galleries else {}

    def load(self, state: dict[str, Any]) -> None:
        for ns, parts in state.items():
            self._gallery(ns).load_state_dict(parts)

    def save_snapshot(self, folder: Storage) -> str:
        return write_shard(folder, self.shard, self.state())

    def load_snapshot(self, folder: Storage, manifest: dict[str, Any]) -> None:
        self.galleries = {}
        self.load(read_shard(folder, self.shard, manifest))


class ShardPool:
    """The driver's handle on the shard actors: fan-out calls, journal, recovery, snapshots."""

    RETRIES = 5

    def __init__(self, cfg: Config, tokenizer: str | Path | Storage, device: str = "cpu"):
        init_ray()
        self.cfg, self.n = cfg, cfg.index.shards
        opts = {"num_cpus": cfg.index.shard_cpus, "num_gpus": cfg.index.shard_gpus}
        check_can_ever_run(f"{self.n} gallery shards", "index.shards x index.shard_cpus / shard_gpus",
                           {"CPU": self.n * cfg.index.shard_cpus, "GPU": self.n * cfg.index.shard_gpus})
        self.actors = [GalleryShard.options(**opts).remote(i, to_dict(cfg), Storage(tokenizer),
                                                           "cuda" if cfg.index.shard_gpus > 0 else "cpu")
                       for i in range(self.n)]
        self._check_ready()
        self.journal: list[list[tuple]] = [[] for _ in range(self.n)]
        self.model_refs: dict[int, Any] = {}
        self.snapshot: tuple[Storage, dict[str, Any]] | None = None
        self.recoveries = 0

    def _check_ready(self) -> None:
        """Every shard read its inputs and built its model, checked before task 1 trains: a node that cannot
        read the dataset or the weights is one line naming the node and the path, not a poll after training."""
        from ccr.errors import ConfigError, DataError, StorageError

        problems = ray.get([a.ready.remote() for a in self.actors])
        bad = [(i, p) for i, p in enumerate(problems) if p]
        if not bad:
            return
        self.shutdown()
        i, (kind, message, node) = bad[0]
        cls = {c.__name__: c for c in (ConfigError, DataError, StorageError)}.get(kind, RuntimeError)
        more = f" (and {len(bad) - 1} more shard(s))" if len(bad) > 1 else ""
        raise cls(f"gallery shard {i} on node {node} cannot start{more}: {message}")

    # ---- calls -------------------------------------------------------------------------------
    def _submit(self, i: int, op: tuple):
        method, *args = op
        if method == "set_model":
            args = [args[0], self.model_refs[args[0]]]
        elif method == "load_state":
            method = "load"
        return getattr(self.actors[i], method).remote(*args)

    def call(self, ops: dict[int, tuple], journal: bool = True) -> dict[int, Any]:
        """Run one op per shard (in parallel); a lost shard is rebuilt and its op retried."""
        refs = {i: self._submit(i, op) for i, op in ops.items()}
        out = {}
        for i, ref in refs.items():
            for attempt in range(self.RETRIES + 1):
                try:
                    out[i] = ray.get(ref)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    if attempt == self.RETRIES:
                        raise
                    log.warning("gallery shard %d was lost: rebuilding it (attempt %d)", i, attempt + 1)
                    self.recover(i)
                    ref = self._submit(i, ops[i])
            if journal:
                self.journal[i].append(ops[i])
        return out

    def call_all(self, *op: Any, journal: bool = True) -> list[Any]:
        res = self.call({i: tuple(op) for i in range(self.n)}, journal)
        return [res[i] for i in range(self.n)]

    def recover(self, i: int) -> None:
        """Rebuild shard i in its restarted actor: last snapshot, then every journaled op since."""
        self.recoveries += 1
        for attempt in range(50):  # the restarted actor may take a moment to come up
            try:
                ray.get(self.actors[i].pid.remote())
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                time.sleep(0.2 * (attempt + 1))
        problem = ray.get(self.actors[i].ready.remote())
        if problem:  # restarted on a node that cannot read the inputs: one line, now
            kind, message, node = problem
            raise RuntimeError(f"gallery shard {i}, restarted on node {node}, cannot start: {message}")
        if self.snapshot:
            ray.get(self.actors[i].load_snapshot.remote(*self.snapshot))
        for op in self.journal[i]:
            ray.get(self._submit(i, op))

    def shutdown(self) -> None:
        """Stop the shard actors (their resources go back to the cluster)."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    # ---- model and snapshots -------------------------------------------------------------------
    def set_model(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.model_refs[version] = ray.put({k: v.detach().cpu() for k, v in state.items()})
        self.call_all("set_model", version)

    def compact(self) -> None:
        """Replace each shard's journal by its current state (held by this driver) and the current model,
        and free every older model: without this, the object store keeps one model per step for ever."""
        states = self.call_all("state", journal=False)
        current = max(self.model_refs) if self.model_refs else None
        # approximate-search templates are not part of a shard's state: keep the last one per namespace
        templates = [list({op[1]: op for op in j if op[0] == "set_template"}.values()) for j in self.journal]
        self.journal = [[("load_state", ray.put(st)), *tpl] + ([("set_model", current)] if current is not None else [])
                        for st, tpl in zip(states, templates, strict=True)]
        self.snapshot = None  # the journal alone rebuilds a shard now
        self.model_refs = {v: r for v, r in self.model_refs.items() if v == current}

    def save_snapshot(self, folder: str | Path | Storage, step: int) -> None:
        folder = Storage(folder)
        digests = self.call_all("save_snapshot", folder, journal=False)
        write_manifest(folder, self.n, self.cfg.model.embed_dim, step, digests)
        self.snapshot = (folder, read_manifest(folder, self.n))
        # the snapshot now holds everything before it; keep the current model op for replays
        self.journal = [[op for op in j if op[0] == "set_model"][-1:] for j in self.journal]

    def load_snapshot(self, folder: str | Path | Storage) -> None:
        folder = Storage(folder)
        man = read_manifest(folder, self.n, self.cfg.model.embed_dim)
        self.call_all("load_snapshot", folder, man, journal=False)
        self.snapshot = (folder, man)
        self.journal = [[] for _ in range(self.n)]


class ShardedGallery:
    """Driver-side view of one gallery spread over a ShardPool (the interface of ccr.index.Gallery)."""

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
        parts = self._split(ids)
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

    def retrain_template(self) -> None:
        """Train the approximate index again at the next search (ccr.index.Gallery.retrain_template)."""
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
            blob = faiss.serialize_index(train_template(self.cfg.approx, sample, self.cfg.nlist, self.cfg.hnsw_m))
            self.trainings.append({"vectors": len(sample), "seconds": round(time.perf_counter() - t0, 4)})
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


class ShardedEvaluator(Evaluator):
    """The Evaluator with every policy's galleries on one pool of shard actors."""

    shards_galleries = True

    def __init__(self, cfg: Config, ds, order: list[str], device: str = "cpu", tokenizer: Storage | None = None):
        if tokenizer is None:
            raise ValueError("ShardedEvaluator needs the tokenizer's storage: its actors embed on other nodes")
        self.pool = ShardPool(cfg, tokenizer, device)
        super().__init__(cfg, ds, order, device, tokenizer)

    def make_state(self, policy: str, cfg: Config, device: str) -> IndexState:
        return IndexState({m: ShardedGallery(f"{policy}/{m}", m, self.pool) for m in MODALITIES})

    def before_index(self, step: int, embedder) -> None:
        self.pool.set_model(step, embedder.model.state_dict())

    def step(self, step: int, embedder, prev_embedder=None) -> None:
        super().step(step, embedder, prev_embedder)
        self.pool.compact()

    def save_snapshots(self, folder: Storage, step: int) -> None:
        self.pool.save_snapshot(folder.child(task_label(step, self.order)), step)

    def close(self) -> None:
        self.pool.shutdown()
