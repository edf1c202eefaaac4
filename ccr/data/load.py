"""Loading a study's dataset (staged, parsed, checked once per content and node), and its task order with every
check a study makes before anything trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ccr.config.schema import Config
from ccr.data import registry
from ccr.data.dataset import DataError, RetrievalDataset
from ccr.data.generated import FAMILIES, load_generated
from ccr.data.karpathy import checked_images, load_karpathy
from ccr.data.validated import load_validated
from ccr.io.images import Pixels


def load_dataset(cfg: Config, pixels: Pixels | None = None) -> RetrievalDataset:
    """The dataset named by `cfg.data`, fully checked; real datasets are parsed and checked once per
    content and node (ccr.data.validated), then read back by every worker, actor and trial. `pixels`: how image
    files become the model's input, decided by the model (`ccr.models.pixels_for(cfg)`): data never reads
    model folders. None: ccr's square crop at model.image.image_size, for models built from a config."""
    d = cfg.data
    if d.kind in registry.LOADERS:  # a plugin's loader (ccr.api.register_loader)
        ds = registry.LOADERS[d.kind](cfg)
        if not isinstance(ds, RetrievalDataset):
            raise DataError(f"the loader of data.kind={d.kind!r} returned {type(ds).__name__}, not a RetrievalDataset")
        return ds
    if d.kind == "sequence":
        from ccr.data.sequence import load_sequence

        return load_sequence(cfg, pixels, load_dataset)
    if d.kind == "generated":
        if d.image_size is None:  # the size the model takes (set in one place)
            side = (pixels if pixels is not None else default_pixels(cfg)).side
            d = dataclasses.replace(d, image_size=side)
        return load_generated(d)
    if d.kind == "imagefolder":  # stages its folder whole (train/ and test/ are subfolders)
        from ccr.data.imagefolder import load_imagefolder_task

        return load_imagefolder_task(d, pixels if pixels is not None else default_pixels(cfg))
    from ccr.io.staging import local_data

    # URIs: this node's staged copies (config.yaml keeps the URIs); with an image cache shared through storage, the
    # image folder is only listed: a node that finds the cache there downloads it and never copies the images
    shared = d.kind == "karpathy" and d.image_cache == "shared" and bool(d.shared_cache)
    d = local_data(d, listed_only=("images",) if shared else ())
    pixels = pixels if pixels is not None else default_pixels(cfg)
    if d.kind == "precomp":
        from ccr.data.precomp import load_precomp

        def load():
            return load_precomp(d)
    elif d.kind == "visual_genome":
        from ccr.data.visual_genome import load_visual_genome

        def load():
            return load_visual_genome(d, pixels)
    else:
        def load():
            return load_karpathy(d, pixels)
    return load_validated(d, pixels, load, lambda sources: _revive(sources, d))


def load_study_dataset(cfg: Config, pixels: Pixels | None = None) -> RetrievalDataset:
    """`load_dataset`, with the galleries' distractors (eval.distractors) appended: what a study evaluates on.
    Their shards are scanned (each sample checked) now, before anything trains; their images are read later."""
    ds = load_dataset(cfg, pixels)
    if not cfg.eval.distractors:
        return ds
    from ccr.data.webdataset import with_distractors

    return with_distractors(ds, cfg.eval.distractors, cfg.eval.distractors_limit,
                            pixels if pixels is not None else default_pixels(cfg), cfg.data.cache_dir)


def default_pixels(cfg: Config) -> Pixels:
    """ccr's square crop at model.image.image_size; a complete pretrained model brings its own preprocessing,
    which only ccr.models reads (`ccr.models.pixels_for`)."""
    if cfg.model.pretrained:
        raise ValueError(f"model.pretrained={cfg.model.pretrained!r} decides how images become pixels: pass "
                         "load_dataset(cfg, ccr.models.pixels_for(cfg))")
    return Pixels.square(cfg.model.image.image_size)


def _revive(sources: dict, d):
    """The image store of a dataset validated before: its files are checked again (exist, decode)."""
    if sources["kind"] == "features":
        from ccr.data.precomp import FeatureStore

        return FeatureStore(sources["files"])
    paths = [Path(p) for p in sources["paths"]]
    return checked_images(paths, Pixels.from_description(sources["pixels"]), d)


def sequence_tasks(cfg: Config, ds: RetrievalDataset) -> list[str]:
    """The dataset's tasks that a sequence may hold, in natural order: not the pretraining tasks, nor
    material that exists for pretraining only (no test items), nor control data (eval.control, or the generated
    benchmark's held-out families, which have test items only)."""
    skip = {*cfg.tasks.pretrain, *ds.info.get("pretrain_only", []), *ds.info.get("control_only", []),
            *cfg.eval.control}
    return [t for t in ds.task_names if t not in skip]


def resolve_task_order(cfg: Config, ds: RetrievalDataset) -> list[str]:
    """The task order: explicit list, a seeded random permutation, or the dataset's natural order."""
    pre = cfg.tasks.pretrain
    unknown = [t for t in pre if t not in ds.task_names]
    if unknown:
        raise DataError(f"tasks.pretrain names unknown task(s) {unknown}; the dataset's tasks are {ds.task_names}"
                        + (" (the generated benchmark has a 'pool' task with data.pretrain_pool > 0)"
                           if ds.name == "generated" else ""))
    names = sequence_tasks(cfg, ds)
    order = cfg.tasks.order
    if order is None:
        return names
    if order == "random":
        rng = np.random.default_rng(cfg.seed)
        return [names[i] for i in rng.permutation(len(names))]
    unknown = [t for t in order if t not in ds.task_names]
    if unknown:
        raise DataError(f"tasks.order names unknown task(s) {unknown}; the dataset's tasks are {ds.task_names}")
    both = [t for t in order if t in pre]
    if both:
        raise DataError(f"tasks.order and tasks.pretrain both name {both}: a task is learned before the sequence "
                        "or in it, not both")
    return list(order)


def check_tasks(ds: RetrievalDataset, order: list[str], min_test: int = 2, workers: int = 1) -> None:
    """Every task in the order needs enough training and test items, checked before anything trains.

    A contrastive batch needs two pairs per worker (in-batch negatives); a task with fewer than
    `min_test` (eval.min_test_items) test images would report recall that means nothing (one test
    image is R@1 = 100 by construction) and inflate every average.
    """
    few_test, few_train = [], []
    for t in order:
        n_test, n_train = len(ds.image_ids(t, "test")), len(ds.image_ids(t, "train"))
        if n_test < min_test:
            few_test.append(f"{t} ({n_test})")
        if n_train < 2 * workers:
            few_train.append(f"{t} ({n_train})")
    if few_test:
        raise DataError(f"tasks with fewer than {min_test} test images (eval.min_test_items): "
                        f"{', '.join(few_test)}; their recall would be meaningless (1 image is R@1 = 100)")
    if few_train:
        raise DataError(f"tasks with fewer than {2 * workers} training images ({workers} worker(s) x 2, for "
                        f"in-batch negatives): {', '.join(few_train)}")


def check_control(ds: RetrievalDataset, order: list[str], cfg: Config) -> None:
    """eval.control names tasks the dataset has, that the sequence never learns, with enough test items."""
    ctl = cfg.eval.control
    unknown = [t for t in ctl if t not in ds.task_names]
    if unknown:
        hint = (" (the generated benchmark adds its held-out shape families, "
                f"{', '.join(list(FAMILIES)[cfg.data.n_tasks:]) or 'none with these n_tasks'}, with "
                "data.control_per_task > 0)") if ds.name == "generated" else ""
        raise DataError(f"eval.control names unknown task(s) {unknown}; the dataset's tasks are {ds.task_names}{hint}")
    learned = [t for t in ctl if t in order]
    if learned:
        raise DataError(f"eval.control: {learned} are in the task order; control data is never trained")
    few = [f"{t} ({n})" for t in ctl if (n := len(ds.image_ids(t, "test"))) < cfg.eval.min_test_items]
    if few:
        raise DataError(f"eval.control: tasks with fewer than {cfg.eval.min_test_items} test images "
                        f"(eval.min_test_items): {', '.join(few)}")


def checked_order(cfg: Config, ds: RetrievalDataset) -> list[str]:
    """The task order, with every check a study makes of its data before anything trains (tasks, splits, control
    data, pretraining tasks): the study and `ccr data` run the same ones."""
    order = resolve_task_order(cfg, ds)
    check_tasks(ds, order, cfg.eval.min_test_items, cfg.resources.workers)
    check_control(ds, order, cfg)
    few = [f"{t} ({n})" for t in cfg.tasks.pretrain if (n := len(ds.image_ids(t, "train"))) < 2]
    if few:
        raise DataError(f"tasks.pretrain: tasks with fewer than 2 training images: {', '.join(few)}")
    return order
