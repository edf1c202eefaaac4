"""Batch embedding of gallery items and queries with one model version.

An Embedder is bound to one model state; it memoises per (modality, ids) so that within a step the
queries, the re-indexing of every policy and the anatomy share one forward pass per item. Cost
accounting is the policies' job, not this cache's: a policy that asks counts what it asked for.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ccr.data.dataset import RetrievalDataset
from ccr.data.pipeline import prefetched
from ccr.models import DualEncoder, TokenizedCaptions
from ccr.models.precision import autocast_for


class Embedder:
    """Embeds images or captions (by global id) with `model`: (n, D) float32 unit vectors."""

    IN_FLIGHT = 16  # batches whose embeddings stay on the device before one copy back: the host prepares the
    # next batches while the device computes (a copy per batch made the GPU wait; 0.80x of a plain loop on an H200)

    def __init__(self, model: DualEncoder, dataset: RetrievalDataset, tokens: TokenizedCaptions,
                 device: torch.device, batch_size: int = 256, amp: bool = True, progress: bool = False,
                 workers: int = 0, tokenize: Callable[[list[str]], TokenizedCaptions] | None = None,
                 remote=None):
        self.model, self.dataset, self.tokens, self.tokenize = model, dataset, tokens, tokenize
        # items embedded elsewhere (index.embed_actors: ccr.distributed.embed_pool.StreamedEmbedding): `covers(m,
        # ids)` says which, `embed(m, ids, model)` embeds them there with this model
        self.remote = remote
        self.device, self.batch_size, self.amp, self.progress = device, batch_size, amp, progress
        self.workers = workers  # DataLoader processes decoding image files ahead (data.num_workers)
        self._memo: dict[tuple[str, str], np.ndarray] = {}
        self.computed = {"images": 0, "captions": 0}  # forward passes actually run
        self.seconds = {"images": 0.0, "captions": 0.0}  # and the time they took (the last copy back included)

    def embed(self, modality: str, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        key = (modality, hashlib.sha1(ids.tobytes()).hexdigest())
        if key not in self._memo:
            self._memo[key] = self._split(modality, ids)
        return self._memo[key]

    def run(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """`embed` without the memo: every call runs the forward passes (calibration times them)."""
        return self._split(modality, np.asarray(ids, dtype=np.int64))

    def _split(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """Dataset items here; those `remote` covers (distractors streamed through an actor pool) there."""
        far = self.remote.covers(modality, ids) if self.remote is not None else None
        if far is None or not far.any():
            return self._run(modality, ids)
        t0 = time.perf_counter()
        out = np.empty((len(ids), self.model.embed_dim), np.float32)
        out[far] = self.remote.embed(modality, ids[far], self.model)
        self.computed[modality] += int(far.sum())
        self.seconds[modality] += time.perf_counter() - t0
        if not far.all():
            out[~far] = self._run(modality, ids[~far])
        return out

    def embed_store(self, store, key: str) -> np.ndarray:
        """Every image of another store (a classification set's), in order; memoised under `key`."""
        if ("store", key) not in self._memo:
            self._memo[("store", key)] = self._run("images", np.arange(len(store), dtype=np.int64), store=store)
        return self._memo[("store", key)]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts that are no dataset caption (class prompts), tokenized as the captions are."""
        if self.tokenize is None:
            raise ValueError("this Embedder was made without a tokenizer: it embeds the dataset's captions only")
        key = ("texts", hashlib.sha1("\0".join(texts).encode()).hexdigest())
        if key not in self._memo:
            self._memo[key] = self._run("captions", np.arange(len(texts), dtype=np.int64), tokens=self.tokenize(texts))
        return self._memo[key]

    @torch.inference_mode()
    def _run(self, modality: str, ids: np.ndarray, store=None, tokens: TokenizedCaptions | None = None
             ) -> np.ndarray:
        """`ids` of the dataset's images or captions, or of `store`'s images / `tokens`' texts."""
        store = store if store is not None else self.dataset.images
        tokens = tokens if tokens is not None else self.tokens
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        out = np.empty((len(ids), self.model.embed_dim), np.float32)
        chunks = range(0, len(ids), self.batch_size)
        images = prefetched(store, [ids[lo:lo + self.batch_size] for lo in chunks], self.workers,
                            pin_memory=self.device.type == "cuda") if modality == "images" else None
        pending: list[tuple[int, torch.Tensor]] = []  # results still on the device: no sync per batch

        def flush() -> None:
            for at, e in pending:
                out[at:at + len(e)] = e.float().cpu().numpy()
            pending.clear()

        for lo in tqdm(chunks, desc=f"embed {modality}", leave=False, disable=None if self.progress else True):
            part = ids[lo:lo + self.batch_size]
            with autocast_for(self.device, self.amp):
                if modality == "images":
                    e = self.model.encode_images(next(images).to(self.device, non_blocking=True))
                elif modality == "captions":
                    tid, mask = tokens.batch(part)
                    e = self.model.encode_text(tid.to(self.device), mask.to(self.device))
                else:
                    raise ValueError(f"unknown modality {modality!r}")
            pending.append((lo, e))
            if len(pending) >= self.IN_FLIGHT:
                flush()
        flush()
        self.computed[modality] += len(ids)
        self.seconds[modality] += time.perf_counter() - t0
        self.model.train(was_training)
        return out
