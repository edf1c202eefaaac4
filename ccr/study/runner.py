"""One continual cross-modal retrieval study: train task by task, index, query, record.

Everything that can fail on bad input (config, dataset files, task order, strategy and policy
names) is checked in `Study.__init__`, before a model is built or trained. After each task a
checkpoint holds the model, the strategy's state and the galleries, so a study resumes from its
last finished task and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ccr.config.plugins import record as plugins_record
from ccr.config.schema import Config, to_dict
from ccr.data import checked_order, load_study_dataset
from ccr.index.backend import Galleries
from ccr.io.checkpoint import from_bytes, to_bytes
from ccr.io.provenance import provenance
from ccr.io.redact import redact_tree
from ccr.io.storage import Storage, open_storage
from ccr.measure import results
from ccr.measure.classification import load_sets
from ccr.measure.evaluation import Evaluator
from ccr.models import TokenizedCaptions, attach_adapter, build_for, model_source, tokenize_all
from ccr.models.adapters import load_trainable_state, trainable_state
from ccr.models.embed import Embedder
from ccr.strategies import TaskContext, build_strategy
from ccr.strategies.base import kept_storage
from ccr.study import outputs
from ccr.study.outputs import TOKENIZER, Tracking, local_copy
from ccr.study.pretraining import pretrained_state
from ccr.study.resume import check_checkpoint, checkpoint_name, checkpoint_path, last_checkpoint, prune_checkpoints
from ccr.train import DistInfo, resolve_device, train_task

log = logging.getLogger(__name__)


class Study:
    """A configured study bound to its storage (a local folder or a URI, see `ccr.io.storage`).

    `out` (a local Path) is the node-local working folder: the storage itself when that is local,
    else a cache; everything that resume or analysis needs is written to `store`. `threads`: torch
    intra-op threads when the config does not fix them (a sweep passes the CPUs a trial was granted).
    The caller decides how the study executes and hands the core what that needs: `galleries` (makes the
    galleries' home: this process, or shard actors), `device` (the GPU a Ray Train worker was given),
    `on_batch(step, rank, batch)` (called before every training batch; tests use it to inject faults).
    """

    def __init__(self, cfg: Config, out: str | Path | Storage, progress: bool = True, threads: int | None = None,
                 *, galleries: Callable[[], Galleries] = Galleries, device: torch.device | None = None,
                 on_batch: Callable[[int, int, int], None] | None = None):
        # model.pretrained read once (what its weights decide: embed_dim, sizes that must agree), then handed down
        self.source = model_source(cfg)
        cfg = self.source.cfg
        if cfg.resources.shards > 1 and galleries is Galleries:
            raise ValueError(f"resources.shards={cfg.resources.shards}: the galleries live on Ray actors; build the "
                             "study with ccr.distributed.runner.make_study, which starts them")
        self.cfg, self.progress, self.threads = cfg, progress, threads
        self.galleries, self.on_batch = galleries, on_batch
        self.store = open_storage(out)
        try:  # a study refused here leaves no folder behind
            self._check_inputs(cfg, device)
        except BaseException:
            self.store.remove_created()
            raise

    def _check_inputs(self, cfg: Config, device: torch.device | None) -> None:
        """Everything a study needs that can be wrong, read and checked before anything trains."""
        self.out = self.store.scratch()
        self.started = time.time()
        self.config_dict = redact_tree(to_dict(cfg))  # what every file records: no credential of any URI
        outputs.check_out_dir(self.store, self.config_dict)
        outputs.clean_leftovers(self.out)
        cfg.index.check_dim(cfg.model.embed_dim)  # what the model decides: known now, before the data is read
        self.ds = load_study_dataset(cfg, self.source.pixels)  # with its distractors (eval.distractors)
        self.order = checked_order(cfg, self.ds)
        self.strategy = build_strategy(cfg.strategy)
        self.strategy.validate(cfg, self.ds, self.order)
        self.classification = load_sets(cfg, self.source.pixels)  # read and decoded before training
        self.device = device if device is not None else resolve_device(cfg.train.device)
        if cfg.train.threads or self.threads:
            torch.set_num_threads(cfg.train.threads or self.threads)
        self.tracking = Tracking(cfg, self.store, self.config_dict, self.order)

    @contextlib.contextmanager
    def logging_to_store(self) -> Iterator[None]:
        """Log ccr's messages to `log.txt` in the working folder (kept in storage with the results)."""
        with outputs.logging_to_store(self.store, self.out):
            yield

    # ---- set-up ------------------------------------------------------------------------------
    def build(self) -> None:
        """Tokenizer (fitted on training captions, saved with the run), model (pretrained first where
        tasks.pretrain says so) and evaluator."""
        for spec, where in plugins_record()["imported"].items():  # in log.txt too: code the study ran
            outputs.log_only.info("plugin %r imported from %s", spec, where["path"])
        self._model()
        warn_small_galleries(self.cfg, self.ds, self.order)
        if self.cfg.model.freeze == "backbone":  # the fixed-features regime: only the heads learn the sequence
            self.model.freeze_backbone()
        self.evaluator = Evaluator(self.cfg, self.ds, self.order, str(self.device), self.galleries(),
                                   self.classification)
        self.evaluator.galleries.hold(self.ds, self.tokens, self.evaluator.gallery_ids())
        self.train_stats: list[dict[str, float]] = []
        self.resumes: list[int] = []  # after which task each resume happened

    def _model(self) -> None:
        if not self.store.is_file(f"{TOKENIZER}/tokenizer_config.json"):
            self.prepare_out()
        tokenizer = local_copy(self.store.child(TOKENIZER))
        self.model, self.tokenizer, self.tokens = build_for(self.source, self.ds, tokenizer, self.device,
                                                            adapter=False)
        self.pretrained: dict[str, Any] | None = None
        if self.cfg.tasks.pretrain:
            state, self.pretrained = pretrained_state(self.source, self.order, self.ds, self.tokens, self.model,
                                                      len(self.tokenizer), self.device, self.progress)
            self.model.load_state_dict(state)
        attach_adapter(self.model, self.cfg)  # on the pretrained model: its base
        self.model.to(self.device)

    def prepare_pretrained(self) -> None:
        """Pretrain (or find) the model here, before data-parallel workers start: they all read it then."""
        if self.cfg.tasks.pretrain:
            self._model()

    def prepare_out(self) -> None:
        """config.yaml and the tokenizer, written once before any training."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.store.write_text("config.yaml", yaml.safe_dump(self.config_dict, sort_keys=False))
        outputs.write_tokenizer(self.store, self.out, self.source, self.ds, self.order)

    def context(self, step: int, dist: DistInfo | None = None) -> TaskContext:
        dist = dist or DistInfo()
        return TaskContext(step, self.order, self.ds, self.tokens, self.cfg, self.device, dist.rank, dist.world_size,
                           dist.all_reduce_mean, gather=dist.gather)

    def embedder(self, model) -> Embedder:
        galleries = getattr(self, "evaluator", None) and self.evaluator.galleries
        return Embedder(model, self.ds, self.tokens, self.device, self.cfg.eval.batch_size, self.cfg.train.amp,
                        self.progress, self.cfg.data.num_workers, tokenize=self.tokenize,
                        remote=galleries.streamed if galleries else None)

    def tokenize(self, texts: list[str]) -> TokenizedCaptions:
        """Texts that are no caption of the dataset (class prompts), tokenized exactly as the captions are."""
        length, trim = self.source.text_length
        return tokenize_all(self.tokenizer, texts, length, trim)

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """Task `step`'s checkpoint; then only the newest `checkpoint.keep` are kept (resume reads the last)."""
        self.store.write_bytes(checkpoint_name(step, self.order), to_bytes({
            "step": step, "order": self.order, "model": trainable_state(self.model),
            "base_fingerprint": getattr(self.model, "base_fingerprint", None),
            "strategy": self.strategy.state_dict(), "evaluator": self.evaluator.state_dict(),
            "train_stats": self.train_stats, "config": self.config_dict, "resumes": self.resumes,
            "torch_threads": torch.get_num_threads(),
        }))
        prune_checkpoints(self.store, step, self.order, self.cfg.checkpoint.keep)

    def resume(self) -> int:
        """Load the last finished task's checkpoint from --out, if any; returns its index (or -1)."""
        done, name = last_checkpoint(self.store, self.order)
        if done >= 0:
            log.info("resuming after task %d/%d (%s) from %s", done + 1, len(self.order), self.order[done],
                     self.store.display(name))
            self.restore(from_bytes(self.store.read_bytes(name), self.store.display(name), map_location=self.device))
        return done

    def restore(self, ck: dict[str, Any]) -> None:
        """Model, strategy state, galleries and statistics from a checkpoint dict (checked to be this study's)."""
        check_checkpoint(ck, self.config_dict, self.order, self.store)
        load_trainable_state(self.model, ck["model"], ck.get("base_fingerprint"),
                             f"the checkpoint after task {ck['step'] + 1} in {self.store.display('checkpoints')}")
        self.strategy.load_state_dict(ck["strategy"])
        self.evaluator.load_state_dict(ck["evaluator"])
        self.train_stats = ck["train_stats"]
        self.resumes = [*ck.get("resumes", []), ck["step"]]

    # ---- the study -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.prepare_out()
        self.build()
        done = self.resume()
        try:
            for step in range(done + 1, len(self.order)):
                self.run_task(step)
            return self.write_results(len(self.order), complete=True)
        finally:
            self.evaluator.close()

    def run_task(self, step: int, dist: DistInfo | None = None, wrap: Callable | None = None) -> dict[str, float]:
        """Learn task `step`, then (on rank 0 only) index, query, checkpoint and write partial results.

        Under data parallelism every rank calls this with its `dist`; `wrap` makes the module to train
        through (DDP), built after `before_task` because a strategy may freeze parameters there.
        """
        dist = dist or DistInfo()
        lead = dist.rank == 0
        ctx = self.context(step, dist)
        needs_prev = lead and self.evaluator.needs_previous_model and step > 0
        prev = copy.deepcopy(self.model).eval() if needs_prev else None
        if lead and step == 0:  # θ0, before anything trains: the zero-shot row (checkpointed after task 1)
            self.evaluator.before_sequence(self.embedder(self.model))
        if lead:
            log.info("task %d/%d: %s (%s)", step + 1, len(self.order), ctx.task, self.strategy.name)
        self.strategy.before_task(ctx, self.model)
        hook = self.on_batch
        stats = train_task(self.model, ctx, self.strategy, forward=wrap(self.model) if wrap else None, dist=dist,
                           progress=self.progress,
                           on_batch=(lambda b: hook(step, dist.rank, b)) if hook is not None else None)
        self.strategy.after_task(ctx, self.model)
        stats.update(kept_storage(self.strategy, self.ds))  # what the strategy keeps now, beside the model
        self.train_stats.append(stats)
        if lead:
            self.evaluate(step, prev)
            self.save_checkpoint(step)
            if step < len(self.order) - 1:
                self.write_results(step + 1, complete=False)
        return stats

    def evaluate(self, step: int, prev_model=None) -> None:
        self.evaluator.step(step, self.embedder(self.model), self.embedder(prev_model) if prev_model else None)
        if self.cfg.index.save_snapshots:
            self.evaluator.save_snapshots(self.store.child("snapshots"), step)

    def write_results(self, upto: int, complete: bool) -> dict[str, Any]:
        res = self.results(upto, complete)
        self.store.write_json("results.json", res)
        outputs.upload_log(self.store, self.out)
        train = self.train_stats[upto - 1] if len(self.train_stats) >= upto else None
        self.tracking.after_task(upto, results.flat_metrics(res), train, complete)
        return res

    def results(self, upto: int, complete: bool) -> dict[str, Any]:
        ev, strategy = self.evaluator, self.cfg.strategy.name
        return results.study_results(
            self.cfg.index.policy, {p: ev.policy_results(p, upto) for p in ev.policy_names},
            status="complete" if complete else "running", tasks_done=upto, config=self.config_dict,
            seed=self.cfg.seed, task_order=self.order,
            strategy=strategy if isinstance(strategy, str) else "+".join(strategy),
            policy=self.cfg.index.policy, scope=self.cfg.eval.scope,
            dataset={"name": self.ds.name, "tasks": self.ds.summary(), **self.ds.info},
            anatomy=ev.anatomy.results(upto) if self.cfg.eval.anatomy else None, initial=ev.initial_results(upto),
            backfill_curve=ev.curve.results(upto), embedding=ev.embedding_results(str(self.device)),
            pretrain=self.pretrained, train=self.train_stats[:upto], resumes=self.resumes,
            provenance={**provenance(), "started": self.started, "finished": time.time(),
                        "device": str(self.device), "torch_threads": torch.get_num_threads(),
                        "storage": self.store.display(), "plugins": plugins_record()})


def run_study(cfg: Config, out: str | Path | Storage, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one study into `out`; returns the results dict also written to results.json."""
    return Study(cfg, out, progress).run()


__all__ = ["Study", "checkpoint_path", "run_study"]


def warn_small_galleries(cfg: Config, ds, order: list[str]) -> None:
    """Said before training: R@K of a gallery of at most K items is 100 % whatever the model (and top-K accuracy
    of a classification task of at most K classes)."""
    few = {t: len(ds.classes[t].names) for t in order if t in ds.classes}
    trivial = {t: [k for k in cfg.eval.ks if k >= n] for t, n in few.items()}
    for t, ks in trivial.items():
        if ks:
            log.warning("R@%s of task %s: K is at least its %d classes, so that its top-K accuracy is 100 %% whatever "
                        "the model", ", R@".join(map(str, ks)), t, few[t])
    for t in few:  # the contrastive loss takes every other pair of the batch as a negative, same class or not
        labels = ds.class_labels[ds.image_ids(t, "train")]
        p = np.bincount(labels) / max(1, len(labels))
        b = cfg.train.batch_size * cfg.resources.workers
        same = b * (b - 1) / 2 * float(np.sum(p ** 2))
        if same >= 1:
            log.warning("task %s is a classification task trained on (image, class prompt) pairs: a batch of %d "
                        "holds about %.0f pairs of one class, which the contrastive loss takes as negatives of "
                        "each other (ZSCL's loss is a cross-entropy over the task's classes; docs/reproducing.md)",
                        t, b, same)
    sizes = {t: len(ds.image_ids(t, "test")) for t in order if t not in ds.classes}
    if not sizes:
        return
    smallest = min(sizes, key=sizes.get)
    trivial = [k for k in cfg.eval.ks if k >= sizes[smallest]]
    if trivial:
        log.warning("R@%s: K is at least the %d test images of task %s, so that recall is 100 %% whatever the "
                    "model (and rsum counts it); use more test items or smaller eval.ks",
                    ", R@".join(map(str, trivial)), sizes[smallest], smallest)
