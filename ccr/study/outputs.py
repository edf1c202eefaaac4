"""A study's output folder: refusing one that holds another study, removing what killed writes left, the log
shipped with the results, config.yaml and the tokenizer written once before training, and the live tracker."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ccr.config.schema import Config
from ccr.data.dataset import RetrievalDataset
from ccr.errors import ConfigError
from ccr.io.redact import SafeFormatter
from ccr.io.storage import TMP_PREFIX, Storage
from ccr.models import ModelSource, build_tokenizer
from ccr.study.resume import config_differences

log = logging.getLogger(__name__)
# what only log.txt keeps (the console said it already: the plugins a run imported); not propagated, so neither a
# console handler nor a Ray worker's forwarded output ever shows it
log_only = logging.getLogger("ccr.log_only")
log_only.propagate = False
TOKENIZER = "tokenizer"  # the study's tokenizer, in its storage: every worker and shard actor loads it from there


def local_copy(store: Storage) -> Path:
    """A folder in storage as a folder on this node's disk (transformers reads tokenizers from folders)."""
    if store.local_path is not None:
        return store.local_path
    return store.download_dir("", store.scratch())


def check_out_dir(store: Storage, config: dict[str, Any]) -> None:
    """Refuse an output folder whose config.yaml is corrupt or records a study with other numbers."""
    try:
        old = yaml.safe_load(store.read_text("config.yaml"))
    except FileNotFoundError:
        return
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{store.display('config.yaml')} is corrupt ({type(e).__name__}); it records "
                          f"the config of the study in that folder: restore it, or use another --out") from e
    if not isinstance(old, dict):
        raise ConfigError(f"{store.display('config.yaml')} is not a ccr config (no mapping); "
                          "restore it, or use another --out")
    differ = config_differences(old, config)
    if differ:
        where = store.display()
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise ConfigError(f"{where} holds a study with a different config ({shown}); resuming it would mix "
                          f"results. Use another --out, or delete {where}")


def clean_leftovers(out: Path) -> None:
    """Temporary files of writes a killed run never finished: never valid, so removed. Only ccr's own
    (TMP_PREFIX): --out may be a folder that holds other files."""
    for folder in (out, out / "checkpoints"):
        for p in folder.glob(f"{TMP_PREFIX}*.tmp") if folder.is_dir() else []:
            log.info("removing %s, left by an interrupted write", p)
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def upload_log(store: Storage, out: Path) -> None:
    if store.remote and (out / "log.txt").is_file():
        store.write_bytes("log.txt", (out / "log.txt").read_bytes())


@contextlib.contextmanager
def logging_to_store(store: Storage, out: Path) -> Iterator[None]:
    """Log ccr's messages to `log.txt` in the working folder `out` (kept in storage with the results)."""
    out.mkdir(parents=True, exist_ok=True)
    if store.remote and not (out / "log.txt").exists() and store.is_file("log.txt"):
        (out / "log.txt").write_bytes(store.read_bytes("log.txt"))  # a resume on another node
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(SafeFormatter())
    root = logging.getLogger("ccr")
    root.addHandler(handler)
    log_only.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    log_only.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        log_only.removeHandler(handler)
        handler.close()
        upload_log(store, out)


def write_tokenizer(store: Storage, out: Path, source: ModelSource, ds: RetrievalDataset, order: list[str]) -> None:
    """The study's tokenizer, fitted on the training captions of everything the model learns, written once as
    a whole folder (a kill mid-save leaves only a .tmp folder)."""
    if store.is_file(f"{TOKENIZER}/tokenizer_config.json"):
        return
    cfg = source.cfg
    tasks = [*cfg.tasks.pretrain, *order]  # the vocabulary of everything the model learns
    train_caps = [ds.captions[c] for c in ds.caption_ids(tasks, "train")]
    if not store.remote and (out / TOKENIZER).exists():
        raise ConfigError(f"{out / TOKENIZER} exists but is not a tokenizer ccr wrote (no "
                          "tokenizer_config.json); ccr replaces only its own files: move it, or use "
                          "another --out")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f"{TMP_PREFIX}tokenizer.", suffix=".tmp"))
    build_tokenizer(cfg.model.text, train_caps, source.tokenizer_folder).save_pretrained(str(tmp))
    if store.remote:  # tokenizer_config.json, the marker read above, is uploaded last
        store.upload_dir(tmp, TOKENIZER, last="tokenizer_config.json")
        shutil.rmtree(tmp)
    else:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; results are meant to be shared
        os.replace(tmp, out / TOKENIZER)


class Tracking:
    """The trackers a config names (tracking.mlflow, tracking.tensorboard), made at the first results."""

    def __init__(self, cfg: Config, store: Storage, config: dict[str, Any], order: list[str]):
        self.cfg, self.store, self.config, self.order = cfg, store, config, order
        self.tracker = None  # ccr.io.tracking.Tracker

    def after_task(self, upto: int, metrics: dict[str, float], train: dict[str, float] | None,
                   complete: bool) -> None:
        """The metrics after task `upto` (and at the end, the artifacts) to the trackers the config names."""
        t = self.cfg.tracking
        if not (t.mlflow or t.tensorboard):
            return
        if self.tracker is None:
            from ccr.io.tracking import Tracker

            name = Path(self.store.display().rstrip("/")).name or "ccr"
            self.tracker = Tracker(self.cfg, self.store, name, self.config, self.order)
        self.tracker.after_task(upto - 1, metrics, train)
        if complete:
            self.tracker.finish(self.store.read_bytes("results.json"), self.store.read_text("config.yaml"))
