"""Typed, strict configuration: dataclasses loaded from YAML, each key's rules declared at its field.

Unknown keys and wrong types are errors naming the dotted key path, raised before any expensive work starts (a
typo in a sweep must not cost a night of GPU time). Choices and bounds are declared with `key(...)` (ccr.config.
rules), rules that tie fields together are each section's `check()`, and `result=False` marks what never changes
a number (so two studies that differ only there are the same study). Keys renamed since an earlier release are
read under their new name, with one line saying so (`RENAMED`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from ccr.config.prompts import SET_NAME, ClassificationSet, check_prompts
from ccr.config.rules import check_fields, key
from ccr.config.rules import non_result_keys as _non_result_keys
from ccr.errors import ConfigError
from ccr.typed import from_dict

__all__ = ["ConfigError", "from_dict"]  # re-exported: where users look for them
log = logging.getLogger(__name__)
# oldest first; a random order; the largest predicted drift first (a linear map fitted from the previous model);
# the most ambiguous old embedding first (closest to another gallery item): index.backfill_order (the backfill
# policy's one order) and eval.backfill_orders (the curve's) take the same names
BACKFILL_ORDERS = ("oldest", "random", "drift", "ambiguity")
MAX_CURVE_POINTS = 101  # eval.backfill_curve: a point every 1 % of the old gallery is the finest that says more
SEQUENCE_KINDS = ("generated", "karpathy", "precomp", "visual_genome", "imagefolder")  # data.datasets[i].kind
# data.captions_per_image when not given: the generated benchmark's 4 captions, Visual Genome's 5 phrases
CAPTIONS_PER_IMAGE = {"generated": 4, "visual_genome": 5}


@dataclass
class DataConfig:
    # generated | karpathy | precomp | visual_genome | imagefolder | sequence (or a plugin's loader)
    kind: str = "generated"
    path: str | None = None  # karpathy: dataset JSON; precomp: folder of {split}_ims.npy/_caps.txt; VG: JSON folder
    images: str | None = None  # image root folder (karpathy, visual_genome)
    tasks_file: str | None = None  # JSON: image -> task (karpathy: by filename; VG: by id; precomp: per split)
    instances: str | None = None  # COCO instances JSON: tasks by the largest object (karpathy)
    task_map: str | None = None  # JSON {category or object name: task} (COCO instances, visual_genome)
    split_file: str | None = None  # visual_genome: JSON {image_id: train|val|test} (else a seeded split)
    cache_dir: str | None = None  # where the generated benchmark is cached (default ~/.cache/ccr)
    # generated benchmark
    n_tasks: int = key(5, ge=1)
    train_per_task: int = key(400, ge=1)
    test_per_task: int = key(100, ge=1)  # also visual_genome's seeded split
    val_per_task: int = key(0, ge=0)  # visual_genome's seeded split
    captions_per_image: int | None = key(None, ge=1)  # generated: 4; visual_genome: region phrases kept per image, 5
    min_caption_words: int = key(1, ge=0)  # visual_genome: shorter region phrases are dropped
    # the generated images' size; None: the size the model takes (model.image.image_size, or a complete pretrained
    # model's own), so the image size is set in one place
    image_size: int | None = key(None, ge=1)
    pretrain_pool: int = 0  # generated: a 'pool' task of this many training images for tasks.pretrain
    generator_seed: int = 0  # the data's own seed (generated benchmark, Visual Genome split): fixed as run seeds vary
    # the input pipeline for image files (karpathy, visual_genome)
    num_workers: int = key(0, ge=0)  # DataLoader worker processes decoding images ahead of training (0: in the loop)
    prefetch_factor: int = key(2, ge=1)  # batches decoded ahead per worker
    in_memory: bool | None = None  # decode every image once into memory (None: when it fits in 2 GiB)
    # decode once into a uint8 memory-mapped file under cache_dir, shared by the trials of a node (true or node), or
    # built once per cluster into shared_cache and downloaded by the other nodes instead of decoding (shared)
    image_cache: bool | str = key(False, choices=(False, True, "node", "shared"))
    # folder or URI of shared caches (default: the sweep's or run's storage, cache/)
    shared_cache: str | None = key(None, result=False)
    # generated: test images of each shape family the sequence never learns (those after n_tasks), as control
    # data (eval.control); rendered after everything else, so the other images stay as they are
    control_per_task: int = key(0, ge=0)
    # imagefolder (a classification dataset as one task, the MTIL protocol): its task's name (default: the
    # folder's), its prompts (`{}` the class name; default CLIP's) and display names (a list in the sorted class
    # folders' order, or {folder: name}; default the folder names, '_' read as a space)
    name: str | None = None
    templates: list[str] | None = None
    classes: dict[str, str] | list[str] | None = None
    # sequence: one task per entry, in this order, each a dataset of any kind with its own keys (and `name`)
    datasets: list[DataConfig] = field(default_factory=list)

    def check(self) -> None:
        """What each data.kind needs, by key name, before any file is opened."""
        need = {"karpathy": ("path", "images"), "precomp": ("path", "tasks_file"),
                "visual_genome": ("path", "images")}.get(self.kind, ())
        for k in need:
            if not getattr(self, k):
                raise ConfigError(f"config key 'data.{k}': required when data.kind is {self.kind}")
        if self.kind == "karpathy" and not self.tasks_file and not self.instances and not self.name:
            raise ConfigError("data.kind=karpathy needs 'data.tasks_file' (image -> task) or "
                              "'data.instances' (COCO annotations: tasks by the largest object's supercategory, "
                              "or by 'data.task_map'), or 'data.name' (the whole dataset one task of that name)")
        if self.kind == "visual_genome" and not self.tasks_file and not self.task_map:
            raise ConfigError("data.kind=visual_genome needs 'data.tasks_file' ({image_id: task}) or "
                              "'data.task_map' ({object name: task})")
        self._check_imagefolder("data")
        if self.kind == "sequence":
            self._check_sequence()
        elif self.datasets:
            raise ConfigError(f"config key 'data.datasets': only data.kind=sequence has datasets (kind is "
                              f"{self.kind})")

    def _check_imagefolder(self, where: str) -> None:
        if self.kind != "imagefolder":
            return
        if not self.path:
            raise ConfigError(f"config key '{where}.path': required when {where}.kind is imagefolder (a folder or URI "
                              "with train/ and test/ class folders, or one ImageFolder and a split_file)")
        check_prompts(where, self.templates, self.classes)

    def _check_sequence(self) -> None:
        """Each entry a dataset of its own (its kind's keys, checked as data's are), named, the names distinct."""
        if not self.datasets:
            raise ConfigError("config key 'data.datasets': data.kind=sequence needs a list of datasets, one task each "
                              "(e.g. [{name: pets, kind: imagefolder, path: ...}, {name: coco, kind: karpathy, ...}])")
        seen: dict[str, int] = {}
        for i, d in enumerate(self.datasets):
            where = f"data.datasets[{i}]"
            if d.kind not in SEQUENCE_KINDS:
                raise ConfigError(f"config key '{where}.kind': {d.kind!r} is not one of {', '.join(SEQUENCE_KINDS)}"
                                  " (a sequence's entries are datasets, each one task)")
            if not d.name or not SET_NAME.fullmatch(d.name):
                raise ConfigError(f"config key '{where}.name': each entry needs a task name of letters, digits, '_', "
                                  f"'.' or '-', got {d.name!r}")
            if d.name in seen:
                raise ConfigError(f"config key '{where}.name': {d.name!r} names data.datasets[{seen[d.name]}] too; "
                                  "task names must differ")
            seen[d.name] = i
            d._check_imagefolder(where)
            check_fields(d, where)


@dataclass
class TasksConfig:
    # list of task names, "random" (permutation from the run seed), or None (dataset's natural order)
    order: list[str] | str | None = None
    # tasks learned jointly, once, before the sequence (not part of it, its recall matrix or its cost); the
    # pretrained model is cached by (data, model, training config, these tasks, seed) and reused
    pretrain: list[str] = field(default_factory=list)
    pretrain_cache: str | None = key(None, result=False)  # folder or URI of that cache (default: data.cache_dir)

    def check(self) -> None:
        if isinstance(self.order, list) and not self.order:
            raise ConfigError("config key 'tasks.order': an empty list names no task (null: the dataset's order)")
        if isinstance(self.order, str) and self.order != "random":
            raise ConfigError(f"config key 'tasks.order': a string must be 'random', got {self.order!r} "
                              "(give task names as a list, e.g. [a,b])")
        if isinstance(self.order, list) and len(set(self.order)) != len(self.order):
            raise ConfigError(f"config key 'tasks.order': names a task twice: {self.order}")


@dataclass
class ImageEncoderConfig:
    pretrained: str | None = None  # folder / URI / hub id of a vision model (ViT, CLIP or SigLIP vision)
    image_size: int = key(32, ge=1)
    patch_size: int = key(4, ge=1)
    hidden_size: int = key(64, ge=1)  # also the MLP on precomputed features (data.kind=precomp)
    layers: int = key(2, ge=0)  # ... and its hidden layers (0: one linear projection, as VSE++)
    heads: int = key(4, ge=1)
    intermediate_size: int = key(128, ge=1)
    pool: str = key("mean", choices=("mean", "cls"))
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def check(self) -> None:
        if self.hidden_size % self.heads:
            raise ConfigError(f"config keys 'model.image.hidden_size' ({self.hidden_size}) and 'model.image.heads' "
                              f"({self.heads}): the hidden size must be a multiple of the number of heads")
        if self.image_size % self.patch_size:
            raise ConfigError(f"config keys 'model.image.image_size' ({self.image_size}) and 'model.image.patch_size' "
                              f"({self.patch_size}): the image size must be a multiple of the patch size")


@dataclass
class TextEncoderConfig:
    pretrained: str | None = None  # folder / URI / hub id of a text model with its tokenizer (BERT, CLIP, SigLIP)
    hidden_size: int = key(64, ge=1)
    layers: int = key(2, ge=1)
    heads: int = key(4, ge=1)
    intermediate_size: int = key(128, ge=1)
    max_length: int = key(24, ge=3, why="[CLS], a word, [SEP]")
    min_word_count: int = 1  # words rarer than this in the training captions map to [UNK]
    pool: str = key("mean", choices=("mean", "cls"))

    def check(self) -> None:
        if self.hidden_size % self.heads:
            raise ConfigError(f"config keys 'model.text.hidden_size' ({self.hidden_size}) and 'model.text.heads' "
                              f"({self.heads}): the hidden size must be a multiple of the number of heads")


@dataclass
class AdapterConfig:
    """Parameter-efficient tuning of the encoders (through peft): only the adapters train in them."""

    kind: str = key("none", choices=("none", "lora"))
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator (the update is alpha / r * B A)
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list[str] | None = None  # module names to adapt (None: q_proj, v_proj in CLIP/SigLIP; query, value)

    def check(self) -> None:
        if self.targets and any(not isinstance(t, str) or not t.strip() for t in self.targets):
            raise ConfigError(f"config key 'model.adapter.targets': module names (as q_proj, value), got "
                              f"{self.targets!r}"[:300])
        bad_targets = self.targets is not None and not self.targets
        if self.kind != "none" and (self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or bad_targets):
            raise ConfigError(f"config key 'model.adapter': need r >= 1, alpha > 0, 0 <= dropout < 1 and a non-empty "
                              f"targets list (or null), got r={self.r}, alpha={self.alpha}, dropout={self.dropout}, "
                              f"targets={self.targets}")


@dataclass
class ModelConfig:
    # a complete pretrained dual encoder (CLIP, SigLIP): folder, storage URI or hub id; model.image / model.text
    # then describe nothing (its towers, projections, scale, tokenizer and preprocessing come from it)
    pretrained: str | None = None
    embed_dim: int | None = key(None, ge=1)  # towers: 64 by default; model.pretrained: the checkpoint's
    freeze: str = key("none", choices=("none", "backbone"))  # backbone: the sequence trains only the heads
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def check(self) -> None:
        if self.pretrained and (self.image.pretrained or self.text.pretrained):
            raise ConfigError("config key 'model.pretrained': a complete dual encoder brings both towers; leave "
                              "model.image.pretrained and model.text.pretrained unset (or use those two alone)")


@dataclass
class TrainConfig:
    epochs: int = key(30, ge=1)
    batch_size: int = key(32, ge=1)  # per data-parallel worker (resources.workers)
    lr: float = key(3e-3, gt=0)
    weight_decay: float = key(0.01, ge=0)
    loss: str = key("infonce", choices=("infonce", "vsepp", "siglip"))  # siglip: sigmoid, with the model's bias
    margin: float = key(0.2, ge=0)  # VSE++ margin
    temperature: float = key(0.07, gt=0)  # InfoNCE initial temperature (learnable)
    learn_temperature: bool = True
    grad_clip: float = key(1.0, ge=0)
    warmup_steps: int = 20
    device: str = key("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    threads: int = 0  # torch CPU threads; 0 = torch's default (it changes the numbers on a CPU: part of a study)
    grad_accum: int = key(1, ge=1)


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
    backend: str = key("faiss", choices=("faiss", "torch"))
    backfill_budget: float = key(0.25, gt=0)  # backfill: fraction (<=1) or count (>1) of old entries per step
    backfill_order: str = key("oldest", choices=BACKFILL_ORDERS)  # which old entries the backfill policy takes
    drift_map_ridge: float = key(1e-3, ge=0)  # drift_map: ridge regularisation of the linear map
    drift_map_fit: int = key(1024, ge=1)  # drift_map / backfill(drift): new task's training items fitting the map
    save_snapshots: bool = False  # after each step, each policy's galleries (out/snapshots/POLICY/NN_TASK)
    # approximate search (recall@10 vs exact reported): IVF-Flat, HNSW, or IVF with product quantization (compressed
    # vectors, for galleries that outgrow RAM)
    approx: str = key("none", choices=("none", "ivf", "hnsw", "ivfpq"))
    nlist: int = key(64, ge=1)  # IVF lists (capped at a quarter of the training vectors)
    nprobe: int = key(8, ge=1)  # IVF lists probed per query
    hnsw_m: int = key(16, ge=2, why="neighbours per HNSW node")
    pq_m: int = key(8, ge=1, why="ivfpq: sub-quantizers per vector; the embedding dimension must be a multiple")
    # ivfpq: bits per sub-quantizer code (2^bits centroids each; fewer where the training sample is smaller)
    pq_nbits: int = key(8, ge=1)
    opq: bool = False  # ivfpq: an OPQ rotation learned before quantizing (faiss's "OPQm,IVFn,PQm")
    # when the approximate index's trained part (IVF's coarse quantizer, HNSW's graph is rebuilt per part anyway)
    # is trained again: never (the one trained at task 1 stays), reindexed (after a step that re-embedded every
    # entry of that gallery), always (every step, on the gallery as it stands)
    approx_retrain: str = key("reindexed", choices=("never", "reindexed", "always"))
    # distractors (eval.distractors) embedded by a Ray Data pool of this many actors (0: where the galleries live),
    # each with embed_cpus CPUs and embed_gpus GPUs
    embed_actors: int = key(0, ge=0)
    embed_cpus: float = key(1.0, gt=0)
    embed_gpus: float = key(0.0, ge=0)

    def check(self) -> None:
        if self.approx != "none" and self.backend != "faiss":
            raise ConfigError("config key 'index.approx': approximate search needs index.backend=faiss")
        if self.pq_nbits > 16:
            raise ConfigError(f"config key 'index.pq_nbits': {self.pq_nbits} bits per code; faiss's product "
                              "quantizer takes 1 to 16 (8 is usual)")

    def check_dim(self, dim: int) -> None:
        """What the embedding dimension must fit, known once the model is (model.embed_dim, or the checkpoint's)."""
        if self.approx == "ivfpq" and dim % self.pq_m:
            raise ConfigError(f"config key 'index.pq_m': {self.pq_m} sub-quantizers do not divide the "
                              f"{dim}-dimensional embeddings; use a divisor of {dim} (e.g. "
                              f"{', '.join(str(m) for m in (4, 8, 16, 32, 64) if dim % m == 0) or 1})")




@dataclass
class EvalConfig:
    scope: str = key("task", choices=("task", "seen"))
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    min_test_items: int = key(2, ge=1)  # a task with fewer test images is refused (its recall would mean nothing)
    batch_size: int = key(256, ge=1, result=False)
    anatomy: bool = True  # compatibility grid, stability and alignment
    val: bool = True  # also the recall matrix on val items (where every task has them): what selection reads
    transfer: bool = False  # after each task, also the tasks not learned yet (Transfer, Avg.: the field's table)
    control: list[str] = field(default_factory=list)  # tasks never trained, evaluated at θ0 and after every task
    # after each step, recall over the seen tasks when this fraction of the old gallery is re-embedded with the
    # new model and the rest keeps its old embeddings (e.g. [0, 0.1, 0.25, 0.5, 1]); no retraining
    backfill_curve: list[float] = field(default_factory=list)  # at most MAX_CURVE_POINTS, each once
    backfill_orders: list[str] = key(factory=lambda: list(BACKFILL_ORDERS), each=BACKFILL_ORDERS)  # old items first
    # zero-shot classification sets, top-1 accuracy at θ0 and after every task (ccr.measure.classification)
    classification: list[ClassificationSet] = field(default_factory=list)
    # gallery entries of no task, in every gallery from task 1 on: a folder or URI prefix of WebDataset tar shards
    # (KEY.jpg|png|webp + KEY.txt per sample), the first `distractors_limit` samples in shard order (0: all)
    distractors: str = ""
    distractors_limit: int = key(0, ge=0)

    def check(self) -> None:
        if self.distractors_limit and not self.distractors:
            raise ConfigError("config key 'eval.distractors_limit' is set, but eval.distractors names no shards")
        for i, c in enumerate(self.classification):
            c.check(f"eval.classification[{i}]")
        names = [c.name for c in self.classification]
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'eval.classification': two sets named "
                              f"{sorted({n for n in names if names.count(n) > 1})}; each set's name must be its own")
        if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"config key 'eval.ks': must be a non-empty list of distinct positive ints, "
                              f"got {self.ks}")
        if len(set(self.control)) != len(self.control):
            raise ConfigError(f"config key 'eval.control': names a task twice: {self.control}")
        if len(self.backfill_curve) > MAX_CURVE_POINTS:
            raise ConfigError(f"config key 'eval.backfill_curve': at most {MAX_CURVE_POINTS} fractions (each is a "
                              f"full evaluation of every step), got {len(self.backfill_curve)}")
        for key_, values in (("backfill_curve", self.backfill_curve), ("backfill_orders", self.backfill_orders)):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"config key 'eval.{key_}': {twice} named twice; each is measured once")
        if any(not 0 <= f <= 1 for f in self.backfill_curve):
            raise ConfigError(f"config key 'eval.backfill_curve': fractions of the old gallery, each in [0, 1], got "
                              f"{self.backfill_curve}")
        if self.backfill_curve and not self.backfill_orders:
            raise ConfigError("config key 'eval.backfill_orders': empty; name at least one of "
                              + ", ".join(BACKFILL_ORDERS))


@dataclass
class ResourcesConfig:
    """What Ray gives a study: data-parallel training workers and gallery shard actors. Where the work runs, not
    what it computes, except `workers`: train.batch_size is per worker, so 2 x 16 trains the objective of 1 x 32."""

    workers: int = key(1, ge=1)  # > 1 (or use_ray): data-parallel training through Ray Train
    use_ray: bool = False  # train through Ray Train even with one worker
    use_gpu: bool | None = None  # None: whether a GPU is visible
    cpus_per_worker: float = 1.0  # Ray resources of each training worker
    max_failures: int = key(0, ge=0, result=False)  # worker-group restarts Ray Train allows (each resumes)
    shards: int = key(1, ge=1)  # > 1: galleries sharded over Ray actors
    shard_cpus: float = 1.0  # Ray resources of each shard actor
    shard_gpus: float = 0.0


@dataclass
class TrackingConfig:
    """Where a study is watched live (ccr.io.tracking); none of it changes a number."""

    mlflow: str | None = None  # an MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, a folder)
    experiment: str | None = None  # default: the sweep's name, or the run's folder name
    tensorboard: bool = False  # TensorBoard event files in each run's folder (tensorboard/)
    parent: str | None = None  # set by `ccr sweep`: the sweep's own MLflow run, parent of its trials' runs


@dataclass
class CheckpointConfig:
    keep: int = key(2, ge=1, why="resume needs the last one", result=False)  # task checkpoints kept (the newest)


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
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = key(factory=TrackingConfig, result=False)
    # labels carried into results and analysis, not read by any stage (a sweep's named case sets
    # tags.<axis>: e.g. tags.regime=pretrained); so they never make two equal studies differ
    tags: dict[str, str] = key(factory=dict, result=False)
    # the user's modules (.py files or module names) imported before the config is checked: the strategies,
    # policies and dataset loaders they register (ccr.api) become valid names (ccr.config.plugins)
    plugins: list[str] = field(default_factory=list)

    def check(self) -> None:
        """The rules that span sections."""
        if self.train.epochs * max(1, self.data.train_per_task) > 10**9:
            raise ConfigError(f"config key 'train.epochs': {self.train.epochs} epochs would plan more batches than "
                              "memory holds; give a realistic number")
        m = self.model
        if self.data.kind == "precomp" and m.pretrained:
            raise ConfigError("config key 'model.pretrained': with data.kind=precomp the images are precomputed "
                              "features; a complete dual encoder needs pixels (use model.text.pretrained for the text)")
        if self.data.kind == "precomp" and m.image.pretrained:
            raise ConfigError("config key 'model.image.pretrained': with data.kind=precomp the images are "
                              "precomputed features, encoded by an MLP (model.image.layers, model.image.hidden_size); "
                              "no image model is loaded")
        if self.index.embed_actors and not self.eval.distractors:
            raise ConfigError("config key 'index.embed_actors': the pool embeds distractors (eval.distractors), and "
                              "this config names none; the tasks' own items are embedded where their galleries live")
        order = self.tasks.order if isinstance(self.tasks.order, list) else []
        both = [t for t in self.eval.control if t in order or t in self.tasks.pretrain]
        if both:
            raise ConfigError(f"config key 'eval.control': {both} are trained (in tasks.order or tasks.pretrain); "
                              "control data is data the model never learns")


# keys that moved: read under their new name (one line says so); results and checkpoints written with the old
# names compare equal to today's (ccr.study.resume upgrades both sides)
RENAMED = {f"train.{k}": f"resources.{k}" for k in ("workers", "use_ray", "use_gpu", "cpus_per_worker",
                                                    "max_failures")}
RENAMED.update({"index.shards": "resources.shards", "index.shard_cpus": "resources.shard_cpus",
                "index.shard_gpus": "resources.shard_gpus"})


def upgrade_tree(tree: dict[str, Any], say: bool = False) -> dict[str, Any]:
    """A config mapping with the keys of `RENAMED` under their new names (a copy; the input is left as it is).
    Both names given with different values is an error; `say`: log one line per old name read."""
    if not isinstance(tree, dict):
        return tree
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for old, new in RENAMED.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if not isinstance(out.get(osec), dict) or okey not in out[osec]:
            continue
        value = out[osec].pop(okey)
        target = out.setdefault(nsec, {})
        if not isinstance(target, dict):
            continue  # a malformed section: the type check names it
        if nkey in target and target[nkey] != value:
            raise ConfigError(f"config keys '{old}' ({value!r}) and '{new}' ({target[nkey]!r}) name the same "
                              f"setting; '{old}' is its old name: give '{new}' alone")
        target[nkey] = value
        if say:
            log.warning("config key '%s' is now '%s'; read as that", old, new)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_config(tree: dict[str, Any]) -> Config:
    """A Config from a (possibly partial) nested dict, with every check this module can make: types, choices,
    sizes, what each data.kind needs. The names of strategies and policies are checked against their
    registries by `ccr.study.configure.build_config`, which composes this with them."""
    cfg = from_dict(Config, upgrade_tree(tree, say=True))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every rule declared in the schema (choices, bounds, each section's `check()`); messages name the key."""
    check_fields(cfg)


def non_result_keys() -> list[str]:
    """Dotted keys (or whole sections) that never change a study's numbers: two configs that differ only there
    are the same study (a resumed run may change them). Not train.threads: on a CPU the number of torch threads
    changes reductions, and so the numbers."""
    return _non_result_keys(Config)
