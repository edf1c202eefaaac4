"""Dataset loaders registered by `data.kind`: ccr's own, and those a plugin adds (`ccr.api.register_loader`).

A loader takes the whole config and returns a `RetrievalDataset`; everything after it (task orders, the checks
of tasks and splits, training, indexing) is the same for every kind. This module imports nothing heavy, so a
config can be checked against it before torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BUILTIN = ("generated", "karpathy", "precomp", "visual_genome", "imagefolder", "sequence")
LOADERS: dict[str, Callable[[Any], Any]] = {}


def register_loader(kind: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorator: `@register_loader("my_kind")` on `def load(cfg) -> RetrievalDataset` makes `data.kind:
    my_kind` valid and load through it."""
    if not isinstance(kind, str) or not kind or kind in BUILTIN:
        raise ValueError(f"a dataset loader needs a new kind name, not {kind!r} (ccr's own: {', '.join(BUILTIN)})")

    def add(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        LOADERS[kind] = fn
        return fn

    return add


def data_kinds() -> tuple[str, ...]:
    return BUILTIN + tuple(sorted(LOADERS))
