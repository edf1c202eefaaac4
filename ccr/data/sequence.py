"""A sequence of datasets (data.kind=sequence): each entry of `data.datasets` is a dataset of its own kind (a
caption dataset, a classification ImageFolder, precomputed features, the generated benchmark) and one task,
named by its `name`, in the listed order: C-CLIP's chain of caption datasets, MTIL's eleven classification sets.

Each entry loads as it would alone (staged, checked and cached once per node), its items keep their split, and all
of them become the entry's one task; ids run over the entries one after another, so tasks never share an item.
Where an entry leaves the input pipeline's keys (cache, workers, image cache) at their defaults it takes the
sequence's own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ccr.config.schema import Config, DataConfig
from ccr.data.dataset import ConcatImages, DataError, RetrievalDataset
from ccr.io.images import Pixels

INHERITED = ("cache_dir", "num_workers", "prefetch_factor", "in_memory", "image_cache", "shared_cache")


def entry_config(cfg: Config, entry: DataConfig) -> Config:
    """The config an entry loads with: its own data keys, the sequence's pipeline keys where it set none."""
    default = DataConfig()
    fill = {k: getattr(cfg.data, k) for k in INHERITED if getattr(entry, k) == getattr(default, k)}
    return dataclasses.replace(cfg, data=dataclasses.replace(entry, **fill))


def load_sequence(cfg: Config, pixels: Pixels | None, load) -> RetrievalDataset:
    """Every entry loaded by `load(config, pixels)` (ccr.data.load.load_dataset), then one dataset of one task per
    entry."""
    parts = [(e.name, load(entry_config(cfg, e), pixels)) for e in cfg.data.datasets]
    names, split, task, captions, owner, labels, stores, classes, info = [], [], [], [], [], [], [], {}, {}
    offset = 0
    for name, ds in parts:
        n = ds.n_images
        names += [f"{name}/{x}" for x in ds.image_names]
        split.append(ds.image_split)
        task.append(np.full(n, name, dtype=object))
        captions += ds.captions
        owner.append(ds.caption_image + offset)
        labels.append(ds.class_labels if ds.class_labels is not None else np.full(n, -1, np.int64))
        stores.append(ds.images)
        if ds.classes:
            classes[name] = next(iter(ds.classes.values()))
        info[name] = {"kind": ds.info.get("kind", ds.name), "images": n, "tasks_merged": list(ds.task_names),
                      **({"classes": len(next(iter(ds.classes.values())).names)} if ds.classes else {})}
        offset += n
    shapes = {tuple(s.load(np.zeros(1, np.int64)).shape[1:]) for s in stores if len(s)}
    if len(shapes) > 1:
        raise DataError(f"data.datasets: the entries' images come in different shapes {sorted(shapes)}; one model "
                        "takes one size (set the same model.image.image_size for all, or leave data.image_size unset)")
    return RetrievalDataset(
        name="sequence", image_names=names, image_split=np.concatenate(split),
        image_task=np.concatenate(task).astype(str), captions=captions, caption_image=np.concatenate(owner),
        images=ConcatImages(stores), task_names=[name for name, _ in parts],
        info={"kind": "sequence", "datasets": info}, classes=classes,
        class_labels=np.concatenate(labels) if classes else None)
