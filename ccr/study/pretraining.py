"""The joint pretraining stage before the sequence (tasks.pretrain), cached by what the pretrained model depends
on, so the trials of a sweep that share it train it once."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch

from ccr.config.schema import Config, to_dict
from ccr.data.dataset import RetrievalDataset
from ccr.io.checkpoint import from_bytes, to_bytes
from ccr.io.storage import Storage
from ccr.models import DualEncoder, ModelSource, TokenizedCaptions
from ccr.strategies import Strategy, TaskContext
from ccr.train import train_task

log = logging.getLogger(__name__)


def pretrain_key(source: ModelSource, order: list[str], vocab_size: int) -> str:
    """What a pretrained model depends on: the data, the vocabulary's tasks, the model, the training
    config, the pretraining tasks, the seed and the torch thread count (numbers depend on it)."""
    from ccr.data.validated import READ_ONLY_KEYS
    from ccr.models.pretrained import fingerprint

    cfg = source.cfg
    tree = to_dict(cfg)
    data = {k: v for k, v in tree["data"].items() if k not in READ_ONLY_KEYS}
    model = {k: v for k, v in tree["model"].items() if k not in ("freeze", "adapter")}
    train = {k: v for k, v in tree["train"].items() if k not in ("max_failures",)}
    m = cfg.model
    model_folder = source.tokenizer_folder  # the complete model's folder on this node, read once
    weights = {k: fingerprint(v) for k, v in (("model", model_folder), ("image", m.image.pretrained),
                                               ("text", m.text.pretrained)) if v}  # content, not the path
    ident = {"v": 1, "data": data, "vocabulary": sorted({*cfg.tasks.pretrain, *order}),
             "model": model, "train": train, **({"weights": weights} if weights else {}),
             "pretrain": sorted(cfg.tasks.pretrain), "seed": cfg.seed,
             "threads": torch.get_num_threads(), "vocab_size": vocab_size}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pretrain_store(cfg: Config) -> Storage:
    """Where pretrained models are cached: tasks.pretrain_cache, else the data cache's `pretrained/`."""
    from ccr.io.storage import cache_root

    return Storage(cfg.tasks.pretrain_cache or cache_root(cfg.data.cache_dir) / "pretrained")


def pretrained_state(source: ModelSource, order: list[str], ds: RetrievalDataset, tokens: TokenizedCaptions,
                     model: DualEncoder, vocab_size: int, device: torch.device, progress: bool
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the model's state after the joint pretraining stage, what results.json records of it): from the cache
    when another study (or trial) with the same key made it, else trained here on the pretraining tasks'
    training items (`model` is trained in place) and cached."""
    cfg = source.cfg
    key, store = pretrain_key(source, order, vocab_size), pretrain_store(cfg)
    name, tasks = f"{key}.pt", list(cfg.tasks.pretrain)
    if store.is_file(name):
        ck = from_bytes(store.read_bytes(name), store.display(name), map_location=device)
        log.info("pretrained model for %s from %s", tasks, store.display(name))
        return ck["model"], {"tasks": tasks, "key": key, "from": "cache", "train": ck["train"]}
    log.info("pretraining on %s (jointly, before the sequence)", tasks)
    ctx = TaskContext(0, [tasks], ds, tokens, cfg, device, pretraining=True)
    stats = train_task(model, ctx, Strategy(), progress=progress)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    store.write_bytes(name, to_bytes({"model": state, "train": stats, "tasks": tasks}))
    return state, {"tasks": tasks, "key": key, "from": "trained", "train": stats}
