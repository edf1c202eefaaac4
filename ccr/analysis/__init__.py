"""Aggregation of ccr results across runs: a tidy table, summary tables, plots and one HTML report."""
