"""One continual cross-modal retrieval study: train task by task, index, query, record.

Everything that can fail on bad input (config, dataset files, task order, strategy and policy
names) is checked in `Study.__init__`, before a model is built or trained. After each task a
checkpoint holds the model, the strategy's state and the galleries, so a study resumes from its
last finished task and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ccr import results
from ccr.checkpoint import from_bytes, to_bytes
from ccr.config import Config, ConfigError, to_dict
from ccr.context import task_label
from ccr.data import checked_order, load_dataset
from ccr.embed import Embedder
from ccr.evaluation import Evaluator
from ccr.models import attach_adapter, build_for, build_tokenizer, resolve_model
from ccr.models.adapters import load_trainable_state, trainable_state
from ccr.provenance import provenance
from ccr.storage import TMP_PREFIX, Storage, open_storage
from ccr.strategies import Strategy, TaskContext, build_strategy
from ccr.train import DistInfo, resolve_device, train_task

log = logging.getLogger(__name__)
# keys that do not change a study's numbers: a resumed run may differ in them. Not train.threads: on a
# CPU the number of torch threads changes reductions, and so the numbers (t2i R@1 after task 1 moved
# from 47.5 to 43.0 between 1 and 2 threads, same seed); the effective count is checked on resume too
NON_RESULT_KEYS = {("train", "max_failures"), ("eval", "batch_size"), ("checkpoint", "keep"),
                   ("tasks", "pretrain_cache"), ("data", "shared_cache")}


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    for sec, key in NON_RESULT_KEYS:
        c.get(sec, {}).pop(key, None)
    c.pop("tags", None)  # labels only
    c.pop("tracking", None)  # where the study is watched, not what it computes
    return c


_MISSING = object()


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys in which two configs differ in a way that changes results. A key one side lacks counts
    only when the other holds a value other than its default: a config written by an earlier ccr, before
    the key existed, is the same study."""
    defaults = to_dict(Config())
    out: list[str] = []

    def walk(a: Any, b: Any, d: Any, path: str) -> None:
        a, b = (d if a is _MISSING else a), (d if b is _MISSING else b)  # absent: at its default
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), d.get(k, _MISSING) if isinstance(d, dict) else _MISSING,
                     f"{path}.{k}" if path else str(k))
        elif a != b:
            out.append(path)

    walk(_comparable(old), _comparable(new), defaults, "")
    return out


def checkpoint_name(step: int, order: Sequence[str]) -> str:
    """The checkpoint after task `step` of `order`, relative to the study's storage (checkpoints/02_boxes.pt)."""
    return f"checkpoints/{task_label(step, order)}.pt"


def _old_checkpoint_name(step: int) -> str:
    """How ccr 0.1 named it (checkpoints/task_01.pt, counted from 0): still read on resume."""
    return f"checkpoints/task_{step:02d}.pt"


def checkpoint_path(out: Path, step: int, order: Sequence[str]) -> Path:
    """The checkpoint after task `step` in a study folder on a local disk."""
    return Path(out) / checkpoint_name(step, order)


def last_checkpoint(store: Storage, order: Sequence[str]) -> tuple[int, str]:
    """(index, name) of the last finished task's checkpoint in storage, or (-1, "")."""
    for step in range(len(order) - 1, -1, -1):
        for name in (checkpoint_name(step, order), _old_checkpoint_name(step)):
            if store.is_file(name):
                return step, name
    return -1, ""


class Study:
    """A configured study bound to its storage (a local folder or a URI, see `ccr.storage`).

    `out` (a local Path) is the node-local working folder: the storage itself when that is local,
    else a cache; everything that resume or analysis needs is written to `store`. `threads`: torch
    intra-op threads when the config does not fix them (a sweep passes the CPUs a trial was granted).
    The caller decides how the study executes and hands the core what that needs: `evaluator` (a class
    with `Evaluator`'s interface, e.g. galleries sharded over actors), `device` (the GPU a Ray Train
    worker was given), `on_batch(step, rank, batch)` (called before every training batch; tests use it
    to inject faults).
    """

    def __init__(self, cfg: Config, out: str | Path | Storage, progress: bool = True, threads: int | None = None,
                 *, evaluator: type[Evaluator] = Evaluator, device: torch.device | None = None,
                 on_batch: Callable[[int, int, int], None] | None = None):
        cfg = resolve_model(cfg)  # what pretrained weights decide (embed_dim), and sizes that must agree
        self.cfg, self.progress, self.threads = cfg, progress, threads
        self.evaluator_cls, self.on_batch = evaluator, on_batch
        self.tracker = None  # ccr.tracking.Tracker, made at the first results a tracked study writes
        if (cfg.index.shards > 1) != evaluator.shards_galleries:
            raise ValueError(f"index.shards={cfg.index.shards} but evaluator {evaluator.__name__} "
                             f"{'shards' if evaluator.shards_galleries else 'does not shard'} galleries: build the "
                             "study with ccr.distributed.runner.make_study, which chooses the evaluator")
        self.store = open_storage(out)
        self.out = self.store.scratch()
        self.started = time.time()
        self.config_dict = to_dict(cfg)
        self._check_out_dir()
        self._clean_leftovers()
        self.ds = load_dataset(cfg)
        self.order = checked_order(cfg, self.ds)
        self.strategy = build_strategy(cfg.strategy)
        self.strategy.validate(cfg, self.ds, self.order)
        self.device = device if device is not None else resolve_device(cfg.train.device)
        if cfg.train.threads or threads:
            torch.set_num_threads(cfg.train.threads or threads)

    def _clean_leftovers(self) -> None:
        """Temporary files of writes a killed run never finished: never valid, so removed. Only ccr's own
        (TMP_PREFIX): --out may be a folder that holds other files."""
        for folder in (self.out, self.out / "checkpoints"):
            for p in folder.glob(f"{TMP_PREFIX}*.tmp") if folder.is_dir() else []:
                log.info("removing %s, left by an interrupted write", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    def _check_out_dir(self) -> None:
        try:
            old = yaml.safe_load(self.store.read_text("config.yaml"))
        except FileNotFoundError:
            return
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.store.display('config.yaml')} is corrupt ({type(e).__name__}); it records "
                              f"the config of the study in that folder: restore it, or use another --out") from e
        if not isinstance(old, dict):
            raise ConfigError(f"{self.store.display('config.yaml')} is not a ccr config (no mapping); "
                              "restore it, or use another --out")
        differ = config_differences(old, self.config_dict)
        if differ:
            where = self.store.display()
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise ConfigError(f"{where} holds a study with a different config ({shown}); resuming it would mix "
                              f"results. Use another --out, or delete {where}")

    @contextlib.contextmanager
    def logging_to_store(self) -> Iterator[None]:
        """Log ccr's messages to `log.txt` in the working folder (kept in storage with the results)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.store.remote and not (self.out / "log.txt").exists() and self.store.is_file("log.txt"):
            (self.out / "log.txt").write_bytes(self.store.read_bytes("log.txt"))  # a resume on another node
        handler = logging.FileHandler(self.out / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("ccr")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()
            self.upload_log()

    def upload_log(self) -> None:
        if self.store.remote and (self.out / "log.txt").is_file():
            self.store.write_bytes("log.txt", (self.out / "log.txt").read_bytes())

    # ---- set-up ------------------------------------------------------------------------------
    def build(self) -> None:
        """Tokenizer (fitted on training captions, saved with the run), model (pretrained first where
        tasks.pretrain says so) and evaluator."""
        self._model()
        if self.cfg.model.freeze == "backbone":  # the fixed-features regime: only the heads learn the sequence
            self.model.freeze_backbone()
        self.evaluator = self.evaluator_cls(self.cfg, self.ds, self.order, str(self.device),
                                            tokenizer=self.store.child("tokenizer"))
        self.train_stats: list[dict[str, float]] = []
        self.resumes: list[int] = []  # after which task each resume happened

    def _model(self) -> None:
        if not self.store.is_file("tokenizer/tokenizer_config.json"):
            self.prepare_out()
        tokenizer = local_copy(self.store.child("tokenizer"))
        self.model, self.tokenizer, self.tokens = build_for(self.cfg, self.ds, tokenizer, self.device, adapter=False)
        self.pretrained: dict[str, Any] | None = None
        if self.cfg.tasks.pretrain:
            self.model.load_state_dict(self.pretrained_state())
        attach_adapter(self.model, self.cfg)  # on the pretrained model: its base
        self.model.to(self.device)

    def prepare_pretrained(self) -> None:
        """Pretrain (or find) the model here, before data-parallel workers start: they all read it then."""
        if self.cfg.tasks.pretrain:
            self._model()

    # ---- pretraining ---------------------------------------------------------------------------
    def pretrain_key(self) -> str:
        """What a pretrained model depends on: the data, the vocabulary's tasks, the model, the training
        config, the pretraining tasks, the seed and the torch thread count (numbers depend on it)."""
        from ccr.data.validated import READ_ONLY_KEYS

        data = {k: v for k, v in to_dict(self.cfg)["data"].items() if k not in READ_ONLY_KEYS}
        model = {k: v for k, v in to_dict(self.cfg)["model"].items() if k not in ("freeze", "adapter")}
        train = {k: v for k, v in to_dict(self.cfg)["train"].items() if k not in ("max_failures",)}
        from ccr.pretrained import fingerprint

        m = self.cfg.model
        weights = {k: fingerprint(v) for k, v in (("model", m.pretrained), ("image", m.image.pretrained),
                                                   ("text", m.text.pretrained)) if v}  # content, not the path
        ident = {"v": 1, "data": data, "vocabulary": sorted({*self.cfg.tasks.pretrain, *self.order}),
                 "model": model, "train": train, **({"weights": weights} if weights else {}),
                 "pretrain": sorted(self.cfg.tasks.pretrain), "seed": self.cfg.seed,
                 "threads": torch.get_num_threads(), "vocab_size": len(self.tokenizer)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def pretrain_store(self) -> Storage:
        from ccr.data.generated import cache_root

        where = self.cfg.tasks.pretrain_cache or cache_root(self.cfg.data.cache_dir) / "pretrained"
        return Storage(where)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The model after the joint pretraining stage: from the cache when another study (or trial) with the
        same key made it, else trained here on the pretraining tasks' training items and cached."""
        key, store = self.pretrain_key(), self.pretrain_store()
        name = f"{key}.pt"
        if store.is_file(name):
            ck = from_bytes(store.read_bytes(name), store.display(name), map_location=self.device)
            self.pretrained = {"tasks": list(self.cfg.tasks.pretrain), "key": key, "from": "cache",
                               "train": ck["train"]}
            log.info("pretrained model for %s from %s", self.cfg.tasks.pretrain, store.display(name))
            return ck["model"]
        log.info("pretraining on %s (jointly, before the sequence)", self.cfg.tasks.pretrain)
        ctx = TaskContext(0, [list(self.cfg.tasks.pretrain)], self.ds, self.tokens, self.cfg, self.device,
                          pretraining=True)
        stats = train_task(self.model, ctx, Strategy(), progress=self.progress)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        store.write_bytes(name, to_bytes({"model": state, "train": stats, "tasks": list(self.cfg.tasks.pretrain)}))
        self.pretrained = {"tasks": list(self.cfg.tasks.pretrain), "key": key, "from": "trained", "train": stats}
        return state

    def context(self, step: int, dist: DistInfo | None = None) -> TaskContext:
        dist = dist or DistInfo()
        return TaskContext(step, self.order, self.ds, self.tokens, self.cfg, self.device, dist.rank, dist.world_size,
                           dist.all_reduce_mean, gather=dist.gather)

    def embedder(self, model) -> Embedder:
        return Embedder(model, self.ds, self.tokens, self.device, self.cfg.eval.batch_size, self.cfg.train.amp,
                        self.progress, self.cfg.data.num_workers)

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
        for old in range(step - self.cfg.checkpoint.keep, -1, -1):  # older ones, newest first
            names = [n for n in (checkpoint_name(old, self.order), _old_checkpoint_name(old)) if self.store.is_file(n)]
            if not names:
                break  # removed at an earlier step
            for n in names:
                self.store.delete(n)

    def load_checkpoint(self, name: str) -> None:
        self.restore(from_bytes(self.store.read_bytes(name), self.store.display(name), map_location=self.device))

    def restore(self, ck: dict[str, Any]) -> None:
        """Model, strategy state, galleries and statistics from a checkpoint dict."""
        step = ck["step"]
        where = f"the checkpoint after task {step + 1} in {self.store.display('checkpoints')}"
        differ = config_differences(ck["config"], self.config_dict) if isinstance(ck.get("config"), dict) else []
        if differ:  # copied in from another study, or config.yaml deleted: its numbers are not this study's
            raise ConfigError(f"{where} was made by a study with a different config ({', '.join(differ[:6])}); "
                              "resuming it would mix results. Use another --out")
        if ck["order"] != self.order:
            raise ConfigError(f"the checkpoint after task {step + 1} in {self.store.display('checkpoints')} has "
                              f"task order {ck['order']}, this study has {self.order}")
        threads = torch.get_num_threads()
        if ck.get("torch_threads", threads) != threads:
            raise ConfigError(f"the study in {self.store.display()} ran with {ck['torch_threads']} torch thread(s); "
                              f"resuming it with {threads} would mix results (the thread count changes the numbers "
                              f"on a CPU). Resume with --set train.threads={ck['torch_threads']}, or use another --out")
        load_trainable_state(self.model, ck["model"], ck.get("base_fingerprint"),
                             f"the checkpoint after task {step + 1} in {self.store.display('checkpoints')}")
        self.strategy.load_state_dict(ck["strategy"])
        self.evaluator.load_state_dict(ck["evaluator"])
        self.train_stats = ck["train_stats"]
        self.resumes = [*ck.get("resumes", []), step]

    # ---- the study -----------------------------------------------------------------------------
    def prepare_out(self) -> None:
        """config.yaml and the tokenizer, written once before any training."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.store.write_text("config.yaml", yaml.safe_dump(self.config_dict, sort_keys=False))
        if not self.store.is_file("tokenizer/tokenizer_config.json"):
            tasks = [*self.cfg.tasks.pretrain, *self.order]  # the vocabulary of everything the model learns
            train_caps = [self.ds.captions[c] for c in self.ds.caption_ids(tasks, "train")]
            if not self.store.remote and (self.out / "tokenizer").exists():
                raise ConfigError(f"{self.out / 'tokenizer'} exists but is not a tokenizer ccr wrote (no "
                                  "tokenizer_config.json); ccr replaces only its own files: move it, or use "
                                  "another --out")
            tmp = Path(tempfile.mkdtemp(dir=self.out, prefix=f"{TMP_PREFIX}tokenizer.", suffix=".tmp"))
            build_tokenizer(self.cfg.model.text, train_caps, self.cfg.model.pretrained).save_pretrained(str(tmp))
            if self.store.remote:  # tokenizer_config.json, the marker read above, is uploaded last
                self.store.upload_dir(tmp, "tokenizer", last="tokenizer_config.json")
                shutil.rmtree(tmp)
            else:  # a whole folder or none: a kill mid-save leaves only a .tmp folder
                os.chmod(tmp, 0o755)  # mkdtemp makes 0700; results are meant to be shared
                os.replace(tmp, self.out / "tokenizer")

    def write_results(self, upto: int, complete: bool) -> dict[str, Any]:
        res = self.results(upto, complete)
        self.store.write_json("results.json", res)
        self.upload_log()
        self.track(upto, res, complete)
        return res

    def track(self, upto: int, res: dict[str, Any], complete: bool) -> None:
        """The metrics after task `upto` (and at the end, the artifacts) to the trackers the config names."""
        t = self.cfg.tracking
        if not (t.mlflow or t.tensorboard):
            return
        if self.tracker is None:
            from ccr.tracking import Tracker

            name = Path(self.store.display().rstrip("/")).name or "ccr"
            self.tracker = Tracker(self.cfg, self.store, name, self.config_dict, self.order)
        train = self.train_stats[upto - 1] if len(self.train_stats) >= upto else None
        self.tracker.after_task(upto - 1, results.flat_metrics(res), train)
        if complete:
            self.tracker.finish(self.store.read_bytes("results.json"), self.store.read_text("config.yaml"))

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

    def resume(self) -> int:
        """Load the last finished task's checkpoint from --out, if any; returns its index (or -1)."""
        done, name = last_checkpoint(self.store, self.order)
        if done >= 0:
            log.info("resuming after task %d/%d (%s) from %s", done + 1, len(self.order), self.order[done],
                     self.store.display(name))
            self.load_checkpoint(name)
        return done

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
        self.train_stats.append(stats)
        self.strategy.after_task(ctx, self.model)
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

    def results(self, upto: int, complete: bool) -> dict[str, Any]:
        ev = self.evaluator
        strategy = self.cfg.strategy.name
        return results.study_results(
            self.cfg.index.policy, {p: ev.policy_results(p, upto) for p in ev.policy_names},
            status="complete" if complete else "running", tasks_done=upto, config=self.config_dict,
            seed=self.cfg.seed, task_order=self.order,
            strategy=strategy if isinstance(strategy, str) else "+".join(strategy),
            policy=self.cfg.index.policy, scope=self.cfg.eval.scope,
            dataset={"name": self.ds.name, "tasks": self.ds.summary(), **self.ds.info},
            anatomy=ev.anatomy_results(upto) if self.cfg.eval.anatomy else None, initial=ev.initial_results(upto),
            backfill_curve=ev.backfill_results(upto), embedding=ev.embedding_results(str(self.device)),
            pretrain=self.pretrained,
            train=self.train_stats[:upto], resumes=self.resumes,
            provenance={**provenance(), "started": self.started, "finished": time.time(),
                        "device": str(self.device), "torch_threads": torch.get_num_threads(),
                        "storage": self.store.display()})


def local_copy(store: Storage) -> Path:
    """A folder in storage as a folder on this node's disk (transformers reads tokenizers from folders)."""
    if store.local_path is not None:
        return store.local_path
    return store.download_dir("", store.scratch())


def run_study(cfg: Config, out: str | Path | Storage, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one study into `out`; returns the results dict also written to results.json."""
    return Study(cfg, out, progress).run()


__all__ = ["Study", "run_study"]
