"""Aggregation of ccr results across runs: a tidy table, summary tables, effects with intervals, re-indexing
economics, plots and one HTML report. The names below are the public API that the scripts of the repository's
top-level `analysis/` folder (and users' notebooks, with `ccr.load_results`) build their tables from."""

from ccr.analysis.aggregate import aggregate, markdown_table
from ccr.analysis.economics import backfill_summary, curve_frame
from ccr.analysis.effects import format_effect, interval, paired_effects
from ccr.analysis.load import collect, per_run_summary, tidy
from ccr.measure.results import metric

__all__ = ["aggregate", "backfill_summary", "collect", "curve_frame", "format_effect", "interval", "markdown_table",
           "metric", "paired_effects", "per_run_summary", "tidy"]
