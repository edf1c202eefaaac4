"""Exact inner-product top-k search over FAISS or torch, and the deterministic merge of partial results.

Results are ordered by score descending, ties broken by the smaller global id, so one flat index,
several shards or several per-task parts all give the same answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

try:
    import faiss
except ImportError:  # pragma: no cover - faiss is a dependency, but the torch backend needs none
    faiss = None


if TYPE_CHECKING:
    import torch

    from ccr.config.schema import IndexConfig

log = logging.getLogger(__name__)


def order_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (-score, id) and keep k; padding (id -1) sorts last."""
    s = np.where(ids < 0, -np.inf, scores)
    key_id = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, -s), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-part (scores (nq, ki), global ids (nq, ki)) into the global top-k (largest scores)."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    return order_topk(scores, ids, k)


class FlatIndex:
    """An exact inner-product index over (n, d) float32 vectors with global ids."""

    # scores of one query chunk stay under this many bytes (the torch backend on a GPU)
    CHUNK_BYTES = 1 << 31

    def __init__(self, vectors: np.ndarray | torch.Tensor, ids: np.ndarray, backend: str = "faiss",
                 device: str = "cpu", dtype: str = "float32"):
        import torch

        self.ids = np.asarray(ids, dtype=np.int64)
        self.backend = backend
        self.dim = vectors.shape[1]
        if backend == "faiss":
            if faiss is None:
                raise RuntimeError("index.backend=faiss but the faiss module is not installed")
            self.index = faiss.IndexFlatIP(self.dim)
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        elif backend == "torch":
            v = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(vectors))
            self.matrix = v.to(device=device, dtype=getattr(torch, dtype))
        else:
            raise ValueError(f"unknown search backend {backend!r} (faiss or torch)")

    def __len__(self) -> int:
        return len(self.ids)

    def _raw(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if self.backend == "faiss":
            return self.index.search(q, kk)
        m = self.matrix
        chunk = max(1, self.CHUNK_BYTES // (len(self) * m.element_size()))
        qt = torch.from_numpy(q).to(m.device, non_blocking=True).to(m.dtype)
        scores, pos = [], []
        with torch.inference_mode():
            for lo in range(0, len(qt), chunk):
                s, p = (qt[lo:lo + chunk] @ m.T).topk(kk, dim=1)
                scores.append(s)
                pos.append(p)
            return torch.cat(scores).float().cpu().numpy(), torch.cat(pos).cpu().numpy()

    def search(self, queries: np.ndarray, k: int, slack: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(nq, d) queries -> top-k (scores, global ids), ties broken by the smaller id.

        One candidate beyond k is fetched: when the k-th score is strictly above it, the top-k set is
        unique; otherwise (a tie across the k-th place) more are fetched until it is, so ties resolve
        exactly by id at the cost of one extra candidate in the common case. With reduced precision
        (a fp16/bf16 torch matrix, or fp32 with TF32 matmuls) scores are rounded so coarsely that such
        ties are rounding artefacts and frequent: they are broken by id among the fetched candidates,
        without a second pass.
        """
        import torch

        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(self)
        if n == 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        kk = min(n, k + slack)
        exact_ties = self.backend == "faiss" or (self.matrix.dtype == torch.float32 and not (
            self.matrix.is_cuda and torch.backends.cuda.matmul.allow_tf32))  # TF32 rounds like fp16
        while True:
            scores, pos = self._raw(q, kk)
            if not exact_ties or kk >= n or k > kk or np.all(scores[:, k - 1] > scores[:, kk - 1]):
                break
            kk = min(n, kk * 4)
        ids = np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], -1)
        scores, ids = order_topk(scores, ids, min(k, kk))
        if ids.shape[1] < k:  # fewer entries than k: pad
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids


class ApproxIndex:
    """An approximate inner-product index (IVF or HNSW) over one part, built from a shared template.

    The IVF coarse quantizer is trained once (on the first vectors the gallery sees) and cloned into
    every part and shard, so all of them partition the space the same way.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, template: faiss.Index, nprobe: int = 8):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.index = faiss.clone_index(template)
        ivf = _ivf(self.index)
        if ivf is not None:
            ivf.nprobe = nprobe
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(len(self), k)
        scores, pos = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), max(1, kk))
        ids = np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], -1)
        scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        scores, ids = order_topk(scores, ids, kk)
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids


def _ivf(index: faiss.Index):
    """The IVF index inside `index` (itself, or behind an OPQ rotation); None for HNSW and flat indexes."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def train_template(cfg: IndexConfig, sample: np.ndarray) -> tuple[faiss.Index, dict[str, int]]:
    """An empty, trained approximate index to clone (`index.approx`: ivf, hnsw or ivfpq), and the sizes it was
    trained with. IVF lists are capped at a quarter of the sample and PQ codes at the bits the sample can train
    (2^bits <= sample size): faiss needs at least as many training vectors as centroids."""
    d = sample.shape[1]
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if cfg.approx == "hnsw":
        return faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT), {"hnsw_m": cfg.hnsw_m}
    nlist = max(1, min(cfg.nlist, len(sample) // 4))
    if cfg.approx == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        return index, {"nlist": nlist}
    if cfg.approx == "ivfpq":
        if d % cfg.pq_m:
            cfg.check_dim(d)
        nbits = max(1, min(cfg.pq_nbits, int(np.log2(max(2, len(sample))))))
        if nbits < cfg.pq_nbits:
            log.info("ivfpq: %d training vectors train %d-bit codes, not index.pq_nbits=%d (2^bits centroids need "
                     "as many vectors)", len(sample), nbits, cfg.pq_nbits)
        opq = cfg.opq and len(sample) >= 256
        if cfg.opq and not opq:  # faiss trains the rotation with 8-bit codes of its own: 256 centroids
            log.warning("ivfpq: %d training vectors cannot train the OPQ rotation (it needs 256); indexing without it",
                        len(sample))
        # faiss's factory: the index owns its parts (quantizer, rotation), so a clone or a copy outlives this frame
        spec = f"{f'OPQ{cfg.pq_m},' if opq else ''}IVF{nlist},PQ{cfg.pq_m}x{nbits}"
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        return index, {"nlist": nlist, "pq_m": cfg.pq_m, "pq_nbits": nbits, "opq": int(opq)}
    raise ValueError(f"unknown approximate index {cfg.approx!r} (ivf, hnsw or ivfpq)")


def overlap_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Recall@k of an approximate search against exact search: mean |top-k ∩ exact top-k| / k."""
    hits = [len(set(a[:k][a[:k] >= 0]) & set(e[:k][e[:k] >= 0])) / max(1, min(k, (e[:k] >= 0).sum()))
            for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")
