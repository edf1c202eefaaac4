"""Typed, strict configuration: dataclasses loaded from YAML.

Unknown keys and wrong types are errors naming the dotted key path, raised before any expensive
work starts (a typo in a sweep must not cost a night of GPU time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ccr.errors import ConfigError
from ccr.typed import from_dict

__all__ = ["ConfigError", "from_dict"]  # re-exported: where users look for them

@dataclass
class DataConfig:
    kind: str = "generated"  # generated | karpathy | precomp | visual_genome
    path: str | None = None  # karpathy: dataset JSON; precomp: folder of {split}_ims.npy/_caps.txt; VG: JSON folder
    images: str | None = None  # image root folder (karpathy, visual_genome)
    tasks_file: str | None = None  # JSON: image -> task (karpathy: by filename; VG: by id; precomp: per split)
    instances: str | None = None  # COCO instances JSON: tasks by the largest object (karpathy)
    task_map: str | None = None  # JSON {category or object name: task} (COCO instances, visual_genome)
    split_file: str | None = None  # visual_genome: JSON {image_id: train|val|test} (else a seeded split)
    cache_dir: str | None = None  # where the generated benchmark is cached (default ~/.cache/ccr)
    # generated benchmark
    n_tasks: int = 5
    train_per_task: int = 400
    test_per_task: int = 100  # also visual_genome's seeded split
    val_per_task: int = 0  # visual_genome's seeded split
    captions_per_image: int | None = None  # generated: 4; visual_genome: region phrases kept per image, 5
    min_caption_words: int = 1  # visual_genome: shorter region phrases are dropped
    image_size: int = 32
    pretrain_pool: int = 0  # generated: a 'pool' task of this many training images for tasks.pretrain
    generator_seed: int = 0  # the data's own seed (generated benchmark, Visual Genome split): fixed as run seeds vary
    # the input pipeline for image files (karpathy, visual_genome)
    num_workers: int = 0  # DataLoader worker processes decoding images ahead of training (0: in the loop)
    prefetch_factor: int = 2  # batches decoded ahead per worker
    in_memory: bool | None = None  # decode every image once into memory (None: when it fits in 2 GiB)
    # decode once into a uint8 memory-mapped file under cache_dir, shared by the trials of a node (true or node), or
    # built once per cluster into shared_cache and downloaded by the other nodes instead of decoding (shared)
    image_cache: bool | str = False
    shared_cache: str | None = None  # folder or URI of shared caches (default: the sweep's or run's storage, cache/)
    # generated: test images of each shape family the sequence never learns (those after n_tasks), as control
    # data (eval.control); rendered after everything else, so the other images stay as they are
    control_per_task: int = 0


@dataclass
class TasksConfig:
    # list of task names, "random" (permutation from the run seed), or None (dataset's natural order)
    order: list[str] | str | None = None
    # tasks learned jointly, once, before the sequence (not part of it, its recall matrix or its cost); the
    # pretrained model is cached by (data, model, training config, these tasks, seed) and reused
    pretrain: list[str] = field(default_factory=list)
    pretrain_cache: str | None = None  # folder or URI of that cache (default: data.cache_dir/pretrained)


@dataclass
class ImageEncoderConfig:
    pretrained: str | None = None  # folder / URI / hub id of a vision model (ViT, CLIP or SigLIP vision)
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64  # also the MLP on precomputed features (data.kind=precomp)
    layers: int = 2  # ... and its hidden layers (0: one linear projection, as VSE++)
    heads: int = 4
    intermediate_size: int = 128
    pool: str = "mean"  # mean | cls
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class TextEncoderConfig:
    pretrained: str | None = None  # folder / URI / hub id of a text model with its tokenizer (BERT, CLIP, SigLIP)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 128
    max_length: int = 24
    min_word_count: int = 1  # words rarer than this in the training captions map to [UNK]
    pool: str = "mean"  # mean | cls


@dataclass
class AdapterConfig:
    """Parameter-efficient tuning of the encoders (through peft): only the adapters train in them."""

    kind: str = "none"  # none | lora
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator (the update is alpha / r * B A)
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list[str] | None = None  # module names to adapt (None: q_proj, v_proj in CLIP/SigLIP; query, value)


@dataclass
class ModelConfig:
    # a complete pretrained dual encoder (CLIP, SigLIP): folder, storage URI or hub id; model.image / model.text
    # then describe nothing (its towers, projections, scale, tokenizer and preprocessing come from it)
    pretrained: str | None = None
    embed_dim: int | None = None  # towers: 64 by default; model.pretrained: the checkpoint's (another is an error)
    freeze: str = "none"  # none | backbone: the sequence trains only the projection heads (fixed features)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    loss: str = "infonce"  # infonce | vsepp | siglip (sigmoid, with the model's bias)
    margin: float = 0.2  # VSE++ margin
    temperature: float = 0.07  # InfoNCE initial temperature (learnable)
    learn_temperature: bool = True
    grad_clip: float = 1.0
    warmup_steps: int = 20
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # data-parallel training through Ray Train
    workers: int = 1  # > 1 (or use_ray): data-parallel training through Ray Train
    use_ray: bool = False  # train through Ray Train even with one worker
    use_gpu: bool | None = None  # None: whether a GPU is visible
    grad_accum: int = 1
    max_failures: int = 0  # worker-group restarts Ray Train allows (each resumes from the last task)
    cpus_per_worker: float = 1.0  # Ray resources of each training worker


@dataclass
class StrategyConfig:
    # a strategy name or a list of names composed in order (e.g. [replay, lwf])
    name: str | list[str] = "finetune"
    # per-strategy hyperparameters, validated against each strategy's own Params dataclass
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class IndexConfig:
    policy: str = "reindex"
    # further policies evaluated on the same training run (indexing never feeds back into training)
    compare: list[str] = field(default_factory=list)
    backend: str = "faiss"  # faiss | torch
    shards: int = 1  # > 1: galleries sharded over Ray actors
    shard_cpus: float = 1.0  # Ray resources of each shard actor
    shard_gpus: float = 0.0
    backfill_budget: float = 0.25  # backfill: fraction (<=1) or count (>1) of old entries per step
    backfill_order: str = "oldest"  # oldest | drift
    drift_map_ridge: float = 1e-3  # drift_map: ridge regularisation of the linear map
    drift_map_fit: int = 1024  # drift_map / backfill(drift): training items of the new task used to fit the map
    save_snapshots: bool = False  # after each step, each shard's galleries (out/snapshots/POLICY/NN_TASK)
    approx: str = "none"  # none | ivf | hnsw: approximate search (its recall@10 vs exact is reported)
    nlist: int = 64  # IVF lists (capped at a quarter of the training vectors)
    nprobe: int = 8  # IVF lists probed per query
    hnsw_m: int = 16
    # when the approximate index's trained part (IVF's coarse quantizer, HNSW's graph is rebuilt per part anyway)
    # is trained again: never (the one trained at task 1 stays), reindexed (after a step that re-embedded every
    # entry of that gallery), always (every step, on the gallery as it stands)
    approx_retrain: str = "reindexed"


# oldest first; a random order; the largest predicted drift first (a linear map fitted from the previous model,
# as index.backfill_order=drift); the most ambiguous old embedding first (closest to another gallery item)
BACKFILL_ORDERS = ("oldest", "random", "drift", "ambiguity")


@dataclass
class EvalConfig:
    scope: str = "task"  # task | seen
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    min_test_items: int = 2  # a task with fewer test images is refused (its recall would mean nothing)
    batch_size: int = 256
    anatomy: bool = True  # compatibility grid, stability and alignment
    val: bool = True  # also the recall matrix on val items (where every task has them): what selection reads
    transfer: bool = False  # after each task, also the tasks not learned yet (ZSCL's Transfer)
    control: list[str] = field(default_factory=list)  # tasks never trained, evaluated at θ0 and after every task
    # after each step, recall over the seen tasks when this fraction of the old gallery is re-embedded with the
    # new model and the rest keeps its old embeddings (e.g. [0, 0.1, 0.25, 0.5, 1]); no retraining
    backfill_curve: list[float] = field(default_factory=list)
    backfill_orders: list[str] = field(default_factory=lambda: list(BACKFILL_ORDERS))  # which old items first


@dataclass
class TrackingConfig:
    """Where a study is watched live (ccr.tracking); none of it changes a number, so none of it makes two studies
    differ."""

    mlflow: str | None = None  # an MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, a folder)
    experiment: str | None = None  # default: the sweep's name, or the run's folder name
    tensorboard: bool = False  # TensorBoard event files in each run's folder (tensorboard/)
    parent: str | None = None  # set by `ccr sweep`: the sweep's own MLflow run, parent of its trials' runs


@dataclass
class CheckpointConfig:
    keep: int = 2  # task checkpoints kept in storage (the newest; resume needs only the last one)


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # labels carried into results and analysis, not read by any stage (a sweep's named case sets
    # tags.<axis>: e.g. tags.regime=pretrained); so they never make two equal studies differ
    tags: dict[str, str] = field(default_factory=dict)
    # the user's modules (.py files or module names) imported before the config is checked: the strategies,
    # policies and dataset loaders they register (ccr.api) become valid names (ccr.plugins)
    plugins: list[str] = field(default_factory=list)


CHOICES: dict[str, tuple[str, ...]] = {
    "train.loss": ("infonce", "vsepp", "siglip"),
    "train.device": ("auto", "cpu", "cuda"),
    "model.image.pool": ("mean", "cls"),
    "model.freeze": ("none", "backbone"),
    "model.adapter.kind": ("none", "lora"),
    "model.text.pool": ("mean", "cls"),
    "index.backend": ("faiss", "torch"),
    "index.backfill_order": ("oldest", "drift"),
    "index.approx": ("none", "ivf", "hnsw"),
    "index.approx_retrain": ("never", "reindexed", "always"),
    "eval.scope": ("task", "seen"),
}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=VALUE` with VALUE parsed as YAML (so `[a,b]`, `1e-3`, `null` work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE (e.g. index.policy=no_reindex)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
    return key, value


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating intermediate mappings."""
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' is not a section; cannot set '{key}'")
        node = nxt
    node[parts[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML would keep the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str) -> Any:
    """YAML as ccr reads it: safe, and a duplicate key is an error, not last-one-wins."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = parse_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def parse_config(tree: dict[str, Any]) -> Config:
    """A Config from a (possibly partial) nested dict, with every check this module can make: types, choices,
    sizes, what each data.kind needs. The names of strategies and policies are checked against their
    registries by `ccr.configure.build_config`, which composes this with them."""
    cfg = from_dict(Config, tree)
    validate(cfg)
    return cfg


def read_tree(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The nested dict of an optional YAML file updated by `KEY=VALUE` overrides (not validated)."""
    tree: dict[str, Any] = read_yaml(path) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        set_path(tree, key, value)
    return tree


def _get(cfg: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        cfg = getattr(cfg, p)
    return cfg


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; every message names the key."""
    for key, allowed in CHOICES.items():
        v = _get(cfg, key)
        if v not in allowed:
            raise ConfigError(f"config key '{key}': {v!r} is not one of {', '.join(allowed)}")
    positive = ["train.epochs", "train.batch_size", "train.workers", "train.grad_accum", "index.shards",
                "eval.batch_size", "eval.min_test_items", "model.embed_dim", "data.n_tasks", "data.train_per_task",
                "data.test_per_task", "data.image_size", "model.image.image_size", "model.image.patch_size",
                "model.image.hidden_size", "model.image.heads", "model.image.intermediate_size",
                "model.text.hidden_size", "model.text.layers", "model.text.heads", "model.text.intermediate_size",
                "index.nlist", "index.nprobe", "index.drift_map_fit"]
    for key in positive:
        if _get(cfg, key) is not None and _get(cfg, key) < 1:
            raise ConfigError(f"config key '{key}': must be >= 1, got {_get(cfg, key)}")
    m = cfg.model
    for side in ("image", "text"):
        enc = getattr(m, side)
        if enc.hidden_size % enc.heads:
            raise ConfigError(f"config keys 'model.{side}.hidden_size' ({enc.hidden_size}) and 'model.{side}.heads' "
                              f"({enc.heads}): the hidden size must be a multiple of the number of heads")
    if m.image.image_size % m.image.patch_size:
        raise ConfigError(f"config keys 'model.image.image_size' ({m.image.image_size}) and 'model.image.patch_size' "
                          f"({m.image.patch_size}): the image size must be a multiple of the patch size")
    if m.image.layers < 0:
        raise ConfigError(f"config key 'model.image.layers': must be >= 0, got {m.image.layers}")
    if m.text.max_length < 3:
        raise ConfigError(f"config key 'model.text.max_length': must be >= 3 ([CLS], a word, [SEP]), got "
                          f"{m.text.max_length}")
    if cfg.index.hnsw_m < 2:
        raise ConfigError(f"config key 'index.hnsw_m': must be >= 2 (neighbours per HNSW node), got {cfg.index.hnsw_m}")
    if isinstance(cfg.tasks.order, list) and not cfg.tasks.order:
        raise ConfigError("config key 'tasks.order': an empty list names no task (null: the dataset's order)")
    if cfg.train.epochs * max(1, cfg.data.train_per_task) > 10**9:
        raise ConfigError(f"config key 'train.epochs': {cfg.train.epochs} epochs would plan more batches than "
                          "memory holds; give a realistic number")
    if cfg.train.lr <= 0:
        raise ConfigError(f"config key 'train.lr': must be > 0, got {cfg.train.lr}")
    if cfg.train.temperature <= 0:
        raise ConfigError(f"config key 'train.temperature': must be > 0, got {cfg.train.temperature}")
    if not cfg.eval.ks or any(k < 1 for k in cfg.eval.ks) or len(set(cfg.eval.ks)) != len(cfg.eval.ks):
        raise ConfigError(f"config key 'eval.ks': must be a non-empty list of distinct positive ints, "
                          f"got {cfg.eval.ks}")
    for key in ("train.weight_decay", "train.grad_clip", "train.margin"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {_get(cfg, key)}")
    if isinstance(cfg.tasks.order, str) and cfg.tasks.order != "random":
        raise ConfigError(f"config key 'tasks.order': a string must be 'random', got {cfg.tasks.order!r} "
                          "(give task names as a list, e.g. [a,b])")
    if isinstance(cfg.tasks.order, list) and len(set(cfg.tasks.order)) != len(cfg.tasks.order):
        raise ConfigError(f"config key 'tasks.order': names a task twice: {cfg.tasks.order}")
    if cfg.index.approx != "none" and cfg.index.backend != "faiss":
        raise ConfigError("config key 'index.approx': approximate search needs index.backend=faiss")
    _validate_data(cfg.data)
    m = cfg.model
    if m.pretrained and (m.image.pretrained or m.text.pretrained):
        raise ConfigError("config key 'model.pretrained': a complete dual encoder brings both towers; leave "
                          "model.image.pretrained and model.text.pretrained unset (or use those two alone)")
    if cfg.data.kind == "precomp" and m.pretrained:
        raise ConfigError("config key 'model.pretrained': with data.kind=precomp the images are precomputed "
                          "features; a complete dual encoder needs pixels (use model.text.pretrained for the text)")
    a = m.adapter
    bad_targets = a.targets is not None and not a.targets
    if a.kind != "none" and (a.r < 1 or a.alpha <= 0 or not 0 <= a.dropout < 1 or bad_targets):
        raise ConfigError(f"config key 'model.adapter': need r >= 1, alpha > 0, 0 <= dropout < 1 and a non-empty "
                          f"targets list (or null), got r={a.r}, alpha={a.alpha}, dropout={a.dropout}, "
                          f"targets={a.targets}")
    if len(set(cfg.eval.control)) != len(cfg.eval.control):
        raise ConfigError(f"config key 'eval.control': names a task twice: {cfg.eval.control}")
    both = [t for t in cfg.eval.control if t in (cfg.tasks.order if isinstance(cfg.tasks.order, list) else [])
            or t in cfg.tasks.pretrain]
    if both:
        raise ConfigError(f"config key 'eval.control': {both} are trained (in tasks.order or tasks.pretrain); "
                          "control data is data the model never learns")
    if cfg.data.control_per_task < 0:
        raise ConfigError(f"config key 'data.control_per_task': must be >= 0, got {cfg.data.control_per_task}")
    if cfg.data.kind == "precomp" and cfg.model.image.pretrained:
        raise ConfigError("config key 'model.image.pretrained': with data.kind=precomp the images are precomputed "
                          "features, encoded by an MLP (model.image.layers, model.image.hidden_size); no image "
                          "model is loaded")
    if cfg.index.backfill_budget <= 0:
        raise ConfigError(f"config key 'index.backfill_budget': must be > 0, got {cfg.index.backfill_budget}")
    if cfg.index.drift_map_ridge < 0:
        raise ConfigError(f"config key 'index.drift_map_ridge': must be >= 0, got {cfg.index.drift_map_ridge}")
    e = cfg.eval
    if any(not 0 <= f <= 1 for f in e.backfill_curve):
        raise ConfigError(f"config key 'eval.backfill_curve': fractions of the old gallery, each in [0, 1], got "
                          f"{e.backfill_curve}")
    if e.backfill_curve and not e.backfill_orders:
        raise ConfigError("config key 'eval.backfill_orders': empty; name at least one of "
                          + ", ".join(BACKFILL_ORDERS))
    for o in e.backfill_orders:
        if o not in BACKFILL_ORDERS:
            raise ConfigError(f"config key 'eval.backfill_orders': unknown order {o!r} (valid: "
                              f"{', '.join(BACKFILL_ORDERS)})")
    if cfg.checkpoint.keep < 1:
        raise ConfigError(f"config key 'checkpoint.keep': must be >= 1 (resume needs the last one), "
                          f"got {cfg.checkpoint.keep}")


def _validate_data(d: DataConfig) -> None:
    """What each data.kind needs, by key name, before any file is opened."""
    need = {"karpathy": ("path", "images"), "precomp": ("path", "tasks_file"),
            "visual_genome": ("path", "images")}.get(d.kind, ())
    for key in need:
        if not getattr(d, key):
            raise ConfigError(f"config key 'data.{key}': required when data.kind is {d.kind}")
    if d.kind == "karpathy" and not d.tasks_file and not d.instances:
        raise ConfigError("data.kind=karpathy needs 'data.tasks_file' (image -> task) or "
                          "'data.instances' (COCO annotations: tasks by the largest object's supercategory, "
                          "or by 'data.task_map')")
    if d.kind == "visual_genome" and not d.tasks_file and not d.task_map:
        raise ConfigError("data.kind=visual_genome needs 'data.tasks_file' ({image_id: task}) or "
                          "'data.task_map' ({object name: task})")
    for key in ("num_workers", "val_per_task", "min_caption_words"):
        if getattr(d, key) < 0:
            raise ConfigError(f"config key 'data.{key}': must be >= 0, got {getattr(d, key)}")
    if d.image_cache not in (False, True, "node", "shared"):
        raise ConfigError(f"config key 'data.image_cache': false, true (= node) or shared, got {d.image_cache!r}")
    if d.prefetch_factor < 1:
        raise ConfigError(f"config key 'data.prefetch_factor': must be >= 1, got {d.prefetch_factor}")
    if d.captions_per_image is not None and d.captions_per_image < 1:
        raise ConfigError(f"config key 'data.captions_per_image': must be >= 1, got {d.captions_per_image}")


# data.captions_per_image when not given: the generated benchmark's 4 captions, Visual Genome's 5 phrases
CAPTIONS_PER_IMAGE = {"generated": 4, "visual_genome": 5}
