"""The Python API behind `ccr.run`, `ccr.load_results` and `ccr.analyze`: what the CLI does, for a notebook."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ccr.config.files import parse_override, set_path
from ccr.config.schema import Config
from ccr.study.configure import build_config, load_config


def config_from(config: str | Path | dict[str, Any] | Config | None, overrides: list[str] | None = None) -> Config:
    """A checked Config from a YAML file, a nested dict, a Config, or None (the embedded default)."""
    if isinstance(config, Config):
        from ccr.config.schema import to_dict

        config = to_dict(config)
    if isinstance(config, dict):
        tree = copy.deepcopy(config)
        for item in overrides or []:
            set_path(tree, *parse_override(item))
        return build_config(tree)
    return load_config(config, overrides)


def run_config(cfg: Config, out: str | Path, progress: bool = False):
    """Run (or resume) the study of `cfg` in `out` under its lock; returns (study, results)."""
    from ccr.distributed.runner import make_study, run_study
    from ccr.io.locks import exclusive
    from ccr.io.storage import open_storage

    store = open_storage(out)
    if cfg.data.image_cache == "shared" and not cfg.data.shared_cache:  # built once, read by every node
        cfg.data.shared_cache = store.child("cache").uri
    study = None
    try:
        with exclusive(store, "run"):  # a second run on this --out is refused, not interleaved
            study = make_study(cfg, store, progress=progress)  # all input checks happen here
            with study.logging_to_store():
                return study, run_study(study)
    except BaseException:
        if study is None:  # refused before it began: no folder left behind (the lock is gone by now)
            store.remove_created()
        raise


def run(config: str | Path | dict[str, Any] | Config | None = None, overrides: list[str] | None = None,
        out: str | Path = "runs/default", progress: bool = False) -> dict[str, Any]:
    """Run (or resume) one study, as `ccr run` does; returns the results also written to OUT/results.json.
    `config`: a YAML file, a nested dict, or None for the embedded default; `overrides`: `KEY=VALUE` strings."""
    return run_config(config_from(config, overrides), out, progress)[1]


@dataclass
class LoadedResults:
    """The tables `ccr analyze` builds, as pandas DataFrames (the same columns as its CSV files)."""

    tidy: pd.DataFrame  # one row per run, policy, step, task, direction, K and metric (tidy.csv)
    per_run: pd.DataFrame  # one row per run, policy, direction and K: final recall, forgetting, ... (per_run.csv)
    aggregate: pd.DataFrame  # means ± std over runs per configuration (aggregate.csv)
    runs: pd.DataFrame  # provenance per run: versions, commit, host, time (runs.csv)
    backfill: pd.DataFrame  # every backfill-curve record (backfill.csv), where measured
    results: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)  # run name -> results.json
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for files that are not results


def load_results(path: str | Path) -> LoadedResults:
    """Every ccr result under a folder or storage URI, as the pandas tables `ccr analyze` builds."""
    from ccr.analysis.aggregate import aggregate
    from ccr.analysis.economics import curve_frame
    from ccr.analysis.load import collect, per_run_summary, provenance_frame, tidy

    c = collect(path)
    summary = per_run_summary(c)
    return LoadedResults(tidy(c), summary, aggregate(summary, False), provenance_frame(c), curve_frame(c.runs),
                         c.runs, c.corrupt)


def analyze(path: str | Path, out: str | Path | None = None, gallery_size: int | None = None,
            price: float | None = None, images_per_second: float | None = None,
            captions_per_second: float | None = None, by_order: bool = False,
            calibration: str | Path | list[str | Path] | None = None) -> Path | str:
    """Write the analysis of every result under `path` (tables, plots, report.html), as `ccr analyze`;
    `gallery_size` (with `price`, `images_per_second`, `captions_per_second`, and `calibration`: files or URIs
    `ccr calibrate` wrote) adds the cost at that size."""
    from ccr.analysis.economics import Scale, read_calibrations
    from ccr.analysis.html_report import analyze as _analyze

    given = [] if calibration is None else [calibration] if isinstance(calibration, (str, Path)) else calibration
    if given and gallery_size is None:
        from ccr.errors import ConfigError

        raise ConfigError("calibration prices the cost at a gallery size: give gallery_size too")
    scale = None if gallery_size is None else Scale(gallery_size, price, images_per_second, captions_per_second,
                                                    read_calibrations([str(g) for g in given]))
    return _analyze(path, out, by_order, scale)
