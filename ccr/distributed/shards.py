"""Sharded galleries on Ray actors.

Each `GalleryShard` actor owns one shard of every gallery (items assigned by a stable hash of their
global id), receives the model of each step, embeds its own items, and holds its indexes; `ShardPool` is the
driver's handle on them (the driver-side galleries on top are ccr.distributed.sharded). Every operation sent
to a shard is journaled; a lost
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

from ccr.config.schema import Config, to_dict
from ccr.distributed.cluster import check_can_ever_run, init_ray
from ccr.index.snapshots import read_manifest, read_shard, write_manifest, write_shard
from ccr.io.storage import Storage

log = logging.getLogger(__name__)



@ray.remote(max_restarts=-1, max_task_retries=0)
class GalleryShard:
    """One shard of every gallery (keyed by namespace, e.g. 'reindex/images')."""

    def __init__(self, shard: int, cfg_dict: dict[str, Any], tokenizer: Storage, device: str):
        from ccr.models import load_tokenizer, model_source
        from ccr.study.configure import build_config
        from ccr.study.outputs import local_copy

        # Arrays that reach an actor through Ray's object store are read-only views (zero copy); the
        # shard only reads them, so torch's warning about tensors made from them is noise here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.shard = shard
        self.version: int | None = None
        self.embedder = None
        self.model = self.items = None  # built when the driver hands this shard its items (hold)
        self.galleries: dict[str, Any] = {}
        self.problem: tuple[str, str, str] | None = None
        try:
            self.cfg: Config = build_config(cfg_dict)
            self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
            # staged on this actor's node (ccr.io.staging) when a URI
            self.source = model_source(self.cfg)  # model.pretrained read once on this actor's node
            # the tokenizer from storage (this actor may run on any node): its vocabulary sizes the model
            folder = local_copy(tokenizer)
            if not (Path(folder) / "tokenizer_config.json").is_file():
                raise FileNotFoundError(f"the study's tokenizer is not in {tokenizer.display()}")
            self.vocab_size = len(load_tokenizer(folder))
        except Exception as e:  # noqa: BLE001 - kept for ready(): the driver raises it, once, before task 1
            self.problem = (type(e).__name__, str(e).splitlines()[0][:600] if str(e) else repr(e),
                            ray.util.get_node_ip_address())

    def ready(self) -> tuple[str, str, str] | None:
        """None when this shard could read its inputs and build its model; else (error class, message, node)."""
        return self.problem

    def _gallery(self, ns: str):
        from ccr.index.gallery import Gallery

        if ns not in self.galleries:
            self.galleries[ns] = Gallery(ns.split("/")[-1], self.cfg.index, str(self.device))
        return self.galleries[ns]

    def pid(self) -> int:
        import os

        return os.getpid()

    def rss_mb(self) -> float:
        """This actor's largest resident size so far, in MB (bench/reindex_at_scale.py)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def hold(self, items: Any) -> int:
        """This shard's own items (ccr.data.owned.OwnedItems: the only images and captions it ever embeds), and
        the study's model built for them; returns how many images it holds."""
        from ccr.models.build import seeded_model

        self.items = items
        self.model = seeded_model(self.source, self.vocab_size, getattr(items.images, "feature_dim", None))
        self.model.to(self.device).eval()
        return len(items.images)

    def hold_sizes(self) -> dict[str, int]:
        """How many images and captions this shard holds (its own items only)."""
        return {"images": len(self.items.images), "captions": len(self.items.tokens.ids)} if self.items else {}

    def set_model(self, version: int, state: dict[str, torch.Tensor]) -> None:
        from ccr.models.embed import Embedder

        if self.model is None:
            raise RuntimeError(f"gallery shard {self.shard} was given no items (ShardPool.hold) before a model")
        self.model.load_state_dict(state)
        self.version = version
        self.embedder = Embedder(self.model, self.items, self.items.tokens, self.device, self.cfg.eval.batch_size,
                                 self.cfg.train.amp, workers=self.cfg.data.num_workers)

    def embed(self, ns: str, task: str, ids: np.ndarray, version: int) -> int:
        if self.version != version:
            raise RuntimeError(f"shard {self.shard} holds model {self.version}, asked to embed with {version}")
        self._gallery(ns).embed(task, ids, version, self.embedder)
        return len(ids)

    def put(self, ns: str, task: str, ids: np.ndarray, vectors: np.ndarray, version: int) -> int:
        """Entries embedded elsewhere (index.embed_actors): this shard's own ids and their vectors."""
        self._gallery(ns).set_entries(task, ids, vectors, version)
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

    def build_seconds(self, ns: str) -> float:
        """Seconds this shard spent building the index of one namespace (ccr.index.gallery.Gallery.build_seconds)."""
        return self.galleries[ns].build_seconds if ns in self.galleries else 0.0

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

    def __init__(self, cfg: Config, tokenizer: str | Path | Storage):
        init_ray()
        self.cfg, self.n = cfg, cfg.resources.shards
        opts = {"num_cpus": cfg.resources.shard_cpus, "num_gpus": cfg.resources.shard_gpus}
        check_can_ever_run(f"{self.n} gallery shards", "resources.shards x resources.shard_cpus / shard_gpus",
                           {"CPU": self.n * cfg.resources.shard_cpus, "GPU": self.n * cfg.resources.shard_gpus})
        self.actors = [GalleryShard.options(**opts).remote(i, to_dict(cfg), Storage(tokenizer),
                                                           "cuda" if cfg.resources.shard_gpus > 0 else "cpu")
                       for i in range(self.n)]
        self._check_ready()
        self.journal: list[list[tuple]] = [[] for _ in range(self.n)]
        self.model_refs: dict[int, Any] = {}
        self.snapshot: tuple[Storage, dict[str, Any]] | None = None
        self.recoveries = 0
        self.held: list[Any] | None = None  # each shard's items (object refs), sent again to a restarted actor

    def _check_ready(self) -> None:
        """Every shard read its inputs and built its model, checked before task 1 trains: a node that cannot
        read the dataset or the weights is one line naming the node and the path, not a poll after training."""
        from ccr.errors import input_error

        problems = ray.get([a.ready.remote() for a in self.actors])
        bad = [(i, p) for i, p in enumerate(problems) if p]
        if not bad:
            return
        self.shutdown()
        i, (kind, message, node) = bad[0]
        more = f" (and {len(bad) - 1} more shard(s))" if len(bad) > 1 else ""
        raise input_error(kind, RuntimeError)(f"gallery shard {i} on node {node} cannot start{more}: {message}")

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
        if self.held is not None:
            ray.get(self.actors[i].hold.remote(self.held[i]))
        if self.snapshot:
            ray.get(self.actors[i].load_snapshot.remote(*self.snapshot))
        for op in self.journal[i]:
            ray.get(self._submit(i, op))

    def shutdown(self) -> None:
        """Stop the shard actors (their resources go back to the cluster)."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    # ---- items, model and snapshots ----------------------------------------------------------------
    def hold(self, items: list[Any]) -> None:
        """Hand shard i its own items (`items[i]`, ccr.data.owned.OwnedItems); kept to rebuild a lost shard."""
        self.held = [ray.put(it) for it in items]
        self.call({i: ("hold", ref) for i, ref in enumerate(self.held)}, journal=False)

    def hold_sizes(self) -> dict[str, int]:
        """How many images and captions this shard holds (its own items only)."""
        return {"images": len(self.items.images), "captions": len(self.items.tokens.ids)} if self.items else {}

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
