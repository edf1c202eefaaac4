"""Resuming a study: which config differences change its numbers, where its task checkpoints are, and the checks
a checkpoint must pass before its state is loaded (same config, same order, same torch threads)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ccr.config.schema import Config, non_result_keys, to_dict, upgrade_tree
from ccr.errors import ConfigError
from ccr.io.checkpoint import task_label
from ccr.io.storage import Storage

_MISSING = object()


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    for dotted in non_result_keys():
        *sections, key = dotted.split(".")
        node = c
        for sec in sections:
            node = node.get(sec, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(key, None)
    return c


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

    walk(_comparable(upgrade_tree(old)), _comparable(upgrade_tree(new)), defaults, "")
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


def prune_checkpoints(store: Storage, step: int, order: Sequence[str], keep: int) -> None:
    """Keep only the newest `keep` task checkpoints up to `step` (resume reads the last)."""
    for old in range(step - keep, -1, -1):  # older ones, newest first
        names = [n for n in (checkpoint_name(old, order), _old_checkpoint_name(old)) if store.is_file(n)]
        if not names:
            break  # removed at an earlier step
        for n in names:
            store.delete(n)


def check_checkpoint(ck: dict[str, Any], config: dict[str, Any], order: list[str], store: Storage) -> None:
    """A checkpoint's numbers are this study's: same config (where it changes results), order and torch threads."""
    step = ck["step"]
    where = f"the checkpoint after task {step + 1} in {store.display('checkpoints')}"
    differ = config_differences(ck["config"], config) if isinstance(ck.get("config"), dict) else []
    if differ:  # copied in from another study, or config.yaml deleted: its numbers are not this study's
        raise ConfigError(f"{where} was made by a study with a different config ({', '.join(differ[:6])}); "
                          "resuming it would mix results. Use another --out")
    if ck["order"] != order:
        raise ConfigError(f"{where} has task order {ck['order']}, this study has {order}")
    threads = torch.get_num_threads()
    if ck.get("torch_threads", threads) != threads:
        raise ConfigError(f"the study in {store.display()} ran with {ck['torch_threads']} torch thread(s); "
                          f"resuming it with {threads} would mix results (the thread count changes the numbers "
                          f"on a CPU). Resume with --set train.threads={ck['torch_threads']}, or use another --out")
