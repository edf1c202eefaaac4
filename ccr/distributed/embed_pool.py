"""Distractors embedded through Ray Data (`index.embed_actors: N`): a pool of N embedding actors, each with the
step's model, reads its batches of distractor images from their shards (ranged reads of the bytes the scan
recorded), decodes them with the model's own preprocessing and embeds them; captions travel as the study
tokenized them (once, when it started). Ray Data streams the batches (backpressure, retries of a lost actor);
only the vectors come back, so no process ever holds the distractors' images, and the driver (or a gallery
shard) holds only their ids and vectors."""

from __future__ import annotations

import logging
import os
import resource
from typing import Any

import numpy as np
import ray
import torch

from ccr.config.schema import Config, to_dict
from ccr.data.owned import positions
from ccr.io.storage import Storage

log = logging.getLogger(__name__)


def _quiet() -> None:
    """Ray Data's progress bars and per-dataset log lines stay out of a study's log (ccr logs its own steps)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _EmbedActor:
    """One actor of the pool: the study's model with one step's weights; batches of rows in, vectors out."""

    def __init__(self, cfg_dict: dict[str, Any], images: Any, vocab_size: int, state: list, device: str):
        from ccr.models import model_source
        from ccr.models.build import seeded_model
        from ccr.study.configure import build_config

        cfg = build_config(cfg_dict)
        self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.source = model_source(cfg)
        self.images = images  # a WebDatasetImages of shard names and the URI only: rows come with each batch
        self.model = seeded_model(self.source, vocab_size)
        self.model.load_state_dict(ray.get(state[0]))
        self.model.to(self.device).eval()
        self.amp = cfg.train.amp

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ccr.models.precision import autocast_for
        from ccr.models.tokenizer import TokenizedCaptions

        with autocast_for(self.device, self.amp):
            if "input_ids" in batch:  # tokenized once by the study; trimmed per batch as its Embedder trims
                tok = TokenizedCaptions(torch.from_numpy(np.ascontiguousarray(batch["input_ids"])),
                                        torch.from_numpy(np.ascontiguousarray(batch["mask"])),
                                        self.source.text_length[1])
                ids, mask = tok.batch(np.arange(len(batch["id"])))
                emb = self.model.encode_text(ids.to(self.device), mask.to(self.device))
            else:
                rows = self.images.rows_of(batch["shard"], batch["offset"], batch["size"], batch["key"])
                emb = self.model.encode_images(rows.to(self.device))
        return {"id": batch["id"], "emb": emb.float().cpu().numpy(), "pid": np.full(len(batch["id"]), os.getpid()),
                "rss_mb": np.full(len(batch["id"]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def block_rows(n: int, batch: int, actors: int) -> int:
    """Rows per Ray Data block: whole batches (a batch never straddles two blocks, so batches are the ones an
    in-process Embedder makes), at most 16 of them (each block costs Ray Data a task's overhead; 4-batch blocks
    cost the captions pass 2.7x the calibration at 10^6), and at least 4 blocks per actor where there is work."""
    per_actor = -(-n // (4 * max(1, actors)))
    return batch * max(1, min(16, -(-per_actor // batch)))


class StreamedEmbedding:
    """The driver's side: which ids are distractors, and their embedding by a Ray Data actor pool."""

    def __init__(self, cfg: Config, tokenizer: Storage):
        from ccr.distributed.cluster import check_can_ever_run, init_ray

        init_ray()
        i = cfg.index
        check_can_ever_run(f"{i.embed_actors} embedding actors", "index.embed_actors x index.embed_cpus / embed_gpus",
                           {"CPU": i.embed_actors * i.embed_cpus, "GPU": i.embed_actors * i.embed_gpus})
        self.cfg, self.tokenizer = cfg, tokenizer
        self.images = None
        self.peak_rss_mb: dict[int, float] = {}  # each embedding actor's (by pid) largest resident size, in MB

    def hold(self, ds: Any, tokens: Any) -> None:
        """The distractors of `ds` (its WebDatasetImages part) and their captions, as `tokens` holds them (the
        study's TokenizedCaptions: tokenized once, not at every pass)."""
        from ccr.data.webdataset import WebDatasetImages
        from ccr.models import load_tokenizer
        from ccr.study.outputs import local_copy

        stores = getattr(ds.images, "stores", [ds.images])
        at = next(k for k, s in enumerate(stores) if isinstance(s, WebDatasetImages))
        self.images = stores[at]
        self.first_image = int(ds.images.offsets[at]) if hasattr(ds.images, "offsets") else 0
        self.first_caption = len(ds.captions) - len(self.images)
        self.tokens = tokens
        self.vocab_size = len(load_tokenizer(local_copy(self.tokenizer)))  # sizes the actors' model

    def covers(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are distractors (embedded by the pool)."""
        first = self.first_image if modality == "images" else self.first_caption
        return np.asarray(ids) >= first if self.images is not None else np.zeros(len(ids), bool)

    def embed(self, modality: str, ids: np.ndarray, model: torch.nn.Module) -> np.ndarray:
        """Vectors of distractor `ids` (global ids of `modality`), in the order given, by `model`'s weights."""
        import pyarrow as pa

        ids = np.asarray(ids, np.int64)
        if modality == "images":
            rows = ids - self.first_image
            im = self.images
            table = pa.table({"id": ids, "shard": im.shard[rows], "offset": im.offset[rows], "size": im.size[rows],
                              "key": [im.keys[r] for r in rows]})
        else:
            from ray.data.extensions import ArrowTensorArray

            rows = torch.as_tensor(ids)
            table = pa.table({"id": ids, "input_ids": ArrowTensorArray.from_numpy(self.tokens.input_ids[rows].numpy()),
                              "mask": ArrowTensorArray.from_numpy(self.tokens.attention_mask[rows].numpy())})
        i = self.cfg.index
        state = [ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})]
        shell = self.images.subset(np.zeros(0, np.int64))  # shard names and URI, no rows
        rows = block_rows(len(ids), self.cfg.eval.batch_size, i.embed_actors)
        blocks = [table.slice(lo, rows) for lo in range(0, len(ids), rows)]
        _quiet()
        data = ray.data.from_arrow(blocks).map_batches(
            _EmbedActor, batch_size=self.cfg.eval.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(i.embed_actors, len(blocks))),
            num_cpus=i.embed_cpus, num_gpus=i.embed_gpus or None,
            fn_constructor_args=(to_dict(self.cfg), shell, self.vocab_size, state,
                                 "cuda" if i.embed_gpus > 0 else "cpu"))
        # each batch's vectors straight into their rows: no list of batches and concatenated copies beside them
        order = np.argsort(ids, kind="stable")
        out, seen = None, np.zeros(len(ids), bool)
        for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
            at, ok = positions(ids[order], batch["id"])
            if not ok.all():
                raise RuntimeError(f"the embedding pool returned {modality} ids it was not given: "
                                   f"{batch['id'][~ok][:5].tolist()}")
            if out is None:
                out = np.empty((len(ids), batch["emb"].shape[1]), np.float32)
            out[order[at]] = batch["emb"]
            seen[order[at]] = True
            for pid, rss in zip(batch["pid"].tolist(), batch["rss_mb"].tolist(), strict=True):
                self.peak_rss_mb[pid] = max(self.peak_rss_mb.get(pid, 0.0), rss)
        if not seen.all():
            raise RuntimeError(f"the embedding pool returned vectors for {int(seen.sum())} of {len(ids)} {modality}")
        return out if out is not None else np.zeros((0, model.embed_dim), np.float32)
