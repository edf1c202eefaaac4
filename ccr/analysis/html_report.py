"""`ccr analyze PATH`: tidy table (Parquet + CSV), aggregate tables (Markdown + CSV), plots, one HTML report.

    ccr analyze runs/sweeps/default --out runs/sweeps/default/analysis
"""

from __future__ import annotations

import base64
import html
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ccr.analysis import cost_plots, economics, field, plots
from ccr.analysis.aggregate import aggregate, initial_table, markdown_table
from ccr.analysis.economics import Scale
from ccr.analysis.effects import effects_markdown, paired_effects
from ccr.analysis.load import collect, per_run_summary, provenance_frame, tidy
from ccr.analysis.report_text import (
    COST_COLUMNS,
    ECON_INTRO,
    ECON_TITLE,
    EFFECTS_INTRO,
    FIELD_NOTE,
    FIGURE_NOTES,
    GLOSSARY,
    INITIAL_INTRO,
    INITIAL_TITLE,
    STYLE,
)
from ccr.io.storage import Storage

log = logging.getLogger(__name__)


def _sweep_config(root: Storage, runs: dict) -> str:
    for name in ("sweep.yaml", "sweep_spec.json"):
        if root.is_file(name):
            return root.read_text(name)
    if runs:
        first = next(iter(runs.values()))["config"]
        return yaml.safe_dump(first, sort_keys=False)
    return "(none found)"


def _md_to_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.strip()]
    if len(lines) < 2:
        return f"<p>{html.escape(md)}</p>"

    def cells(ln):
        return [c.strip() for c in ln.strip().strip("|").split("|")]

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells(lines[0]))
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for ln in lines[2:]:
        row = []
        for c in cells(ln):
            bold = c.startswith("**") and c.endswith("**")
            c = html.escape(c.strip("*"))
            row.append(f"<td><b>{c}</b></td>" if bold else f"<td>{c}</td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def analyze(path: str | Path, out: str | Path | None = None, by_order: bool = False,
            scale: Scale | None = None) -> Path | str:
    """Analyse every ccr result under `path` (a folder or storage URI); returns the output folder
    (a Path when it is local, else its URI without query).

    The output (default PATH/analysis) may be a URI too: it is made in a local folder, then uploaded.
    `scale` (ccr analyze --gallery-size ...) adds what each policy costs at that gallery size.
    """
    root = Storage(path)
    dest = Storage(out) if out else root.child("analysis")
    c = collect(root)
    if dest.local_path is not None:
        _write_analysis(root, c, dest.local_path, by_order, scale)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _write_analysis(root, c, Path(tmp), by_order, scale)
            dest.upload_dir(tmp, "")
    log.info("analysis of %d runs written to %s", len(c.runs), dest.display())
    return dest.local_path or dest.display()


def _fmt(v, decimals: int | None = None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        if decimals is None:
            decimals = column_decimals([v])
        v = round(v, decimals) + 0.0  # + 0.0: no "-0.0"
        return f"{v:,.{decimals}f}"
    return html.escape(str(v)) if isinstance(v, str) else str(v)


def column_decimals(values) -> int:
    """One number of decimals for a whole column: four significant digits of its largest value, at most three
    decimals, none from 1,000 on (so 20.62 stands beside 22.10, not 22.1)."""
    finite = [abs(float(v)) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
              and np.isfinite(v)]
    top = max(finite, default=0.0)
    if top >= 1000:
        return 0
    return 3 if top == 0 else int(min(3, max(0, 3 - np.floor(np.log10(top)))))


def frame_markdown(df: pd.DataFrame) -> str:
    """A data frame as a markdown table: each numeric column to one number of decimals, thousands separated."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    decimals = [column_decimals(df[c].tolist()) for c in df.columns]
    rows = ["| " + " | ".join(_fmt(v, d) for v, d in zip(r, decimals, strict=True)) + " |"
            for r in df.itertuples(index=False)]
    return "\n".join([head, "|" + "---|" * len(df.columns), *rows])


def _economics(c, summary: pd.DataFrame, out: Path, scale: Scale | None, k: int) -> tuple[list[str], list]:
    """The re-indexing section's tables (markdown, under their titles) and its plots, with cost_at_scale.csv/.md
    and backfill.csv."""
    md, figs = [], []
    flips = economics.flips_table(summary, k)
    if not flips.empty:
        md += [f"## Negative flips at K={k} (% of old tasks' queries, mean over updates and runs)", "",
               frame_markdown(flips), ""]
    curve = economics.curve_frame(c.runs)
    if not curve.empty:
        curve.to_csv(out / "backfill.csv", index=False)
        bs = economics.backfill_summary(curve, k)
        md += [f"## Backfill after the last task, R@{k}: recall with none and all of the old gallery re-embedded, "
               "and the fraction that gets 90 % of full backfill's recall back", "", frame_markdown(bs), ""]
        figs += [cost_plots.backfill_curves(curve, out, k, d) for d in ("t2i", "i2t")]
    if scale is not None:
        rows = economics.cost_rows(c.runs, scale, k)
        table = economics.cost_table(rows)
        if not table.empty:
            table.to_csv(out / "cost_at_scale.csv", index=False)
            show = [col for col in table.columns if not col.startswith(("images_sequence", "captions_sequence"))]
            text = frame_markdown(table[show])
            (out / "cost_at_scale.md").write_text(f"# Cost at a gallery of {scale.gallery_size:,} images\n\n"
                                                  f"{COST_COLUMNS}\n\n{text}\n")
            money = f", USD at {scale.price:g} per device-hour" if scale.price is not None else ""
            md += [f"## Cost at a gallery of {scale.gallery_size:,} images (per model update, and over the "
                   f"sequence; device-hours of re-embedding and index building{money})", "",
                   COST_COLUMNS, "", text, ""]
            figs += [cost_plots.cost_at_scale(table, economics.curve_costs(c.runs, scale, k), out, scale.gallery_size,
                                         k)]
    return md, figs


def _sections_html(md: list[str]) -> list[str]:
    """Markdown lines of `## title` and tables as HTML: each title a heading, each table a table."""
    return [_md_to_html(t) if t.startswith("|") else f"<h3>{html.escape(t.lstrip('# '))}</h3>"
            for t in md if t.strip()]


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a config column whose values differ in type between runs (another
    ccr version, a hand-edited file) is written as text, JSON for what is not a string."""
    out = df.copy()
    for col in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and np.isnan(v))}
        if len(kinds) > 1 or (kinds and not kinds <= {str}):
            out[col] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else
                        v if isinstance(v, str) else json.dumps(v, default=str) for v in out[col]]
    return out


def _figure(path: Path) -> str:
    note = next((v for k, v in FIGURE_NOTES.items() if path.stem.startswith(k)), "")
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
            f"<figcaption>{note} <span class=file>({html.escape(path.name)})</span></figcaption></figure>")


def _values(series: pd.Series) -> str:
    """The distinct values of a column, escaped for HTML: results are files anyone could have written."""
    vals = sorted({str(v) for v in series.dropna()})
    return html.escape(", ".join(vals)) if vals else "not recorded"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _provenance_html(prov: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Who made these numbers with what: the facts a reader needs to trust or reproduce them."""
    if prov.empty:
        return "<p>No runs.</p>"
    secs = prov.seconds.dropna()
    items = [
        ("strategies", _values(prov.strategy)),
        ("indexing policies", _values(summary.policy) if not summary.empty else "-"),
        ("seeds", html.escape(", ".join(str(s) for s in sorted(prov.seed.dropna().unique(), key=str)))),
        ("task orders", "<br>".join(html.escape(o.replace(">", " → ")) for o in sorted(prov.task_order.unique()))),
        ("torch threads per run", _values(prov.torch_threads)),
        ("device", _values(prov.device)),
        ("ccr / torch / ray / python", " / ".join(_values(prov[f"version.{k}"]) for k in ("ccr", "torch", "ray",
                                                                                      "python"))),
        ("git commit", _values(prov.commit)),
        ("study time", (f"{_minutes(secs.sum())} summed over runs (not wall time: runs may overlap); per run "
                        f"{_minutes(secs.min())} to {_minutes(secs.max())}, "
                        f"median {_minutes(secs.median())}") if len(secs) else "not recorded"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f"<table class=facts>{rows}</table>"


def _runs_html(prov: pd.DataFrame) -> str:
    if prov.empty:  # every results file was skipped: the problems list says why
        return "<p>No runs.</p>"
    cols = ["run", "strategy", "seed", "status", "seconds", "torch_threads", "host", "commit"]

    def cell(v, c: str) -> str:
        return "" if pd.isna(v) else f"{v:.0f}" if c == "seconds" else str(v)

    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r[c], c))}</td>" for c in cols) + "</tr>"
                   for _, r in prov.sort_values("run").iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def paired_tables(summary: pd.DataFrame, k: int) -> tuple[pd.DataFrame, list[str]]:
    """Policy effects against reindex and strategy effects against finetune, where both are present."""
    frames, md = [], []
    for factor, baseline in (("policy", "reindex"), ("strategy", "finetune")):
        e = paired_effects(summary, factor, baseline, k) if not summary.empty else pd.DataFrame()
        if e.empty:
            continue
        frames.append(e.assign(factor=factor))
        md += [f"## {factor} − {baseline}, K={k}", "", effects_markdown(e, factor, k), ""]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), md


def _write_analysis(root: Storage, c, out: Path, by_order: bool, scale: Scale | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    long = tidy(c)
    summary = per_run_summary(c)
    prov = provenance_frame(c)
    agg = aggregate(summary, by_order)
    if not long.empty:
        _parquet_safe(long).to_parquet(out / "tidy.parquet", index=False)
        long.to_csv(out / "tidy.csv", index=False)
    summary.to_csv(out / "per_run.csv", index=False)
    prov.to_csv(out / "runs.csv", index=False)
    agg.to_csv(out / "aggregate.csv", index=False)
    ks = sorted(int(k) for k in agg["k"].unique()) if not agg.empty else []  # whatever eval.ks measured
    tables = {k: markdown_table(agg, k, totals=k == ks[0]) for k in ks}  # rsum and cost once, not per K
    md = [f"# ccr analysis of `{root.display()}`", "",
          f"{_count(len(c.runs), 'run')} ({len(c.incomplete)} incomplete), {len(c.corrupt)} corrupt result files, "
          f"{len(c.missing)} runs without results, {len(c.failed)} failed.", ""]
    for k, t in tables.items():
        md += [f"## Average final recall, forgetting and BWT at K={k} (mean ± std over n runs; best in bold)", "",
               t, ""]
    initial = initial_table(agg, ks[0]) if ks else ""
    if initial:
        md += [f"## {INITIAL_TITLE}", "", INITIAL_INTRO, "", initial, ""]
    effects, effect_md = paired_tables(summary, ks[0] if ks else 1)
    if not effects.empty:
        effects.to_csv(out / "effects.csv", index=False)
    md += [EFFECTS_INTRO, "", *effect_md]
    k0 = ks[0] if ks else 1
    econ_md, econ_figs = _economics(c, summary, out, scale, k0)
    if econ_md:
        md += [f"## {ECON_TITLE}", ECON_INTRO, *econ_md]
    field_md = _field_table(c, out, k0)  # its own files: its cost columns are measurements, summary.md is the results'
    (out / "summary.md").write_text("\n".join(md))
    (out / "effects.md").write_text("\n".join([EFFECTS_INTRO, "", *effect_md]))

    figs = _figures(long, summary, effects, out, ks[0] if ks else 1) + [f for f in econ_figs if f]
    page = _report_page(root, c, prov, summary, tables, initial, effect_md, econ_md, figs, field_md)
    (out / "report.html").write_text(page)
    (out / "status.json").write_text(json.dumps({"runs": len(c.runs), "incomplete": c.incomplete,
                                                 "corrupt": c.corrupt, "missing": c.missing,
                                                 "failed": [r for r, _ in c.failed]}, indent=1))


def _field_table(c, out: Path, k: int) -> str:
    """field_table.csv / .md / .tex: the field's Transfer, Avg. and Last with the cost columns (ccr.analysis.field);
    returns the table as markdown ("" without runs)."""
    table = field.field_table(c.runs, k)
    if table.empty:
        return ""
    title = f"The field's table at R@{k}: Transfer, Avg. and Last (ZSCL's definitions), classification, costs"
    table.to_csv(out / "field_table.csv", index=False)
    text = frame_markdown(table)
    (out / "field_table.md").write_text(f"# {title}\n\n{FIELD_NOTE}\n\n{text}\n")
    (out / "field_table.tex").write_text(field.to_latex(table, title, [column_decimals(table[c].tolist())
                                                                       for c in table.columns]))
    return text


def _figures(long: pd.DataFrame, summary: pd.DataFrame, effects: pd.DataFrame, out: Path, k: int) -> list[Path]:
    """Every plot of the runs, at the smallest K measured (R@1 unless eval.ks says otherwise)."""
    if long.empty:
        return []
    figs = [plots.forgetting_bars(summary, out, k=k), plots.quality_vs_cost(summary, out, k=k)]
    figs += [plots.heatmaps(long, out, direction=d, k=k) for d in ("t2i", "i2t")]
    figs += [plots.task_curves(long, out, direction=d, k=k) for d in ("t2i", "i2t")]
    figs += plots.anatomy_plots(long, out, k=k)
    figs += [plots.stability_vs_forgetting(long, summary, out, k=k)]
    if not effects.empty:
        figs += [plots.effect_intervals(effects, out, k=k, metric=m) for m in ("t2i R", "i2t R")]
    return [f for f in figs if f]


def _report_page(root: Storage, c, prov: pd.DataFrame, summary: pd.DataFrame, tables: dict[int, str], initial: str,
                 effect_md: list[str], econ_md: list[str], figs: list[Path], field_md: str = "") -> str:
    """report.html: every table and plot in one file, with what each number means and where it came from."""
    problems = []
    problems += [f"corrupt: {html.escape(p)} ({html.escape(why)})" for p, why in c.corrupt]
    problems += [f"incomplete (still running or stopped): {html.escape(r)}" for r in c.incomplete]
    problems += [f"no results yet: {html.escape(r)}" for r in c.missing]
    problems += [f"failed trial: {html.escape(r)}: <pre>{html.escape(e)}</pre>" for r, e in c.failed]
    body = [
        f"<h1>ccr analysis</h1><p>{html.escape(root.display())}: {len(c.runs)} runs analysed"
        f"{f', {len(problems)} problems (listed below)' if problems else ''}.</p>",
        _provenance_html(prov, summary),
        "<h2>How to read these numbers</h2><dl>" + "".join(f"<dt>{html.escape(t)}</dt><dd>{d}</dd>"
                                                           for t, d in GLOSSARY) + "</dl>",
    ]
    for i, (k, t) in enumerate(tables.items()):
        title = f"Summary at K={k}: average final recall, forgetting, BWT, rsum and index cost"
        if i == 0:
            body += [f"<h2>{title}</h2>", _md_to_html(t)]
        else:
            body += [f"<details><summary>{title}</summary>{_md_to_html(t)}</details>"]
    if initial:
        body += [f"<h2>{INITIAL_TITLE}</h2>", f"<p>{html.escape(INITIAL_INTRO)}</p>", _md_to_html(initial)]
    body += ["<h2>Paired effects: which differences are real</h2>", f"<p>{html.escape(EFFECTS_INTRO)}</p>"]
    body += _sections_html(effect_md)
    if econ_md:
        body += [f"<h2>{ECON_TITLE}</h2>", f"<p>{html.escape(ECON_INTRO)}</p>", *_sections_html(econ_md)]
    body += ["<h2>Plots</h2>", *[_figure(f) for f in figs]]
    if field_md:  # field_table.md's table: measurements beside the results, so in the report, not in summary.md
        body += ["<h2>The field's table (field_table.csv / .md / .tex)</h2>", f"<p>{html.escape(FIELD_NOTE)}</p>",
                 _md_to_html(field_md)]
    body += ["<h2>Failed, missing and incomplete runs</h2>",
             "<ul class=problems>" + "".join(f"<li>{p}</li>" for p in problems) + "</ul>" if problems
             else "<p>None.</p>"]
    body += ["<h2>Runs and configuration</h2>",
             f"<details><summary>{len(prov)} runs: seed, time, threads, host, commit</summary>{_runs_html(prov)}"
             "</details>",
             f"<details><summary>configuration</summary><pre>{html.escape(_sweep_config(root, c.runs))}</pre>"
             "</details>"]
    return (f"<!doctype html><html lang=en><head><meta charset='utf-8'><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>ccr analysis</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def load_tidy(out: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "tidy.parquet")
