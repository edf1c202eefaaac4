"""The config a study runs with, composed above the registries.

`ccr.config.schema` knows the schema and every check that needs only the config itself; the names of strategies and
policies (and a strategy's own parameters) are checked here against their registries, which live with what
they register. So `ccr.config.schema` imports no registry, and whatever adds to a registry is imported before a
config is checked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ccr.config.files import read_tree
from ccr.config.schema import CAPTIONS_PER_IMAGE, Config, ConfigError, parse_config


def build_config(tree: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict (strategy defaults filled in). The
    config's plugins are imported first, so what they register is valid here and in every process that builds
    this config (sweep trials, Ray Train workers, shard actors)."""
    from ccr.config.plugins import import_plugins

    import_plugins(tree.get("plugins") if isinstance(tree, dict) else None)
    cfg = parse_config(tree)
    # imported here, not at module level: a typo'd key fails before torch is imported
    from ccr.data.registry import data_kinds
    from ccr.index.policies import check_policy_names
    from ccr.strategies import build_strategy, check_strategy_config

    if cfg.data.kind not in data_kinds():
        raise ConfigError(f"config key 'data.kind': {cfg.data.kind!r} is not one of {', '.join(data_kinds())}")
    check_strategy_config(cfg.strategy)
    check_policy_names([cfg.index.policy, *cfg.index.compare])
    if cfg.tracking.mlflow or cfg.tracking.tensorboard:  # a missing extra is one line, before anything runs
        from ccr.io.tracking import require_mlflow, require_tensorboard

        if cfg.tracking.mlflow:
            require_mlflow()
        if cfg.tracking.tensorboard:
            require_tensorboard()
    cfg = with_defaults(cfg)
    build_strategy(cfg.strategy).check(cfg)  # what the strategy needs of the config alone (no data, no torch)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The embedded default, updated by an optional YAML file and `KEY=VALUE` overrides."""
    return build_config(read_tree(path, overrides))


def with_defaults(cfg: Config) -> Config:
    """A copy of a valid config that states every strategy hyperparameter used (defaults filled in), so
    the saved config says what ran. Validation itself never changes the config."""
    from ccr.strategies import strategy_params

    data, model = cfg.data, cfg.model

    def filled(data):
        if data.captions_per_image is None and data.kind in CAPTIONS_PER_IMAGE:
            data = dataclasses.replace(data, captions_per_image=CAPTIONS_PER_IMAGE[data.kind])
        if data.image_size is None and not model.pretrained:  # the size set in one place: the model's
            data = dataclasses.replace(data, image_size=model.image.image_size)
        return data

    data = filled(data)
    if data.datasets:  # a sequence's entries: each says what it ran with, as a dataset alone would
        data = dataclasses.replace(data, datasets=[filled(d) for d in data.datasets])
    if model.embed_dim is None and not model.pretrained:  # a complete model's: its checkpoint's
        model = dataclasses.replace(model, embed_dim=64)
    return dataclasses.replace(cfg, data=data, model=model,
                               strategy=dataclasses.replace(cfg.strategy, params=strategy_params(cfg.strategy)))
