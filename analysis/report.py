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

import pandas as pd
import yaml

from analysis import plots
from analysis.aggregate import aggregate, markdown_table
from analysis.load import collect, per_run_summary, tidy
from ccr.storage import Storage

log = logging.getLogger(__name__)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{path.stem}">'
            f"<figcaption>{path.stem}</figcaption></figure>")


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


def analyze(path: str | Path, out: str | Path | None = None, by_order: bool = False) -> Path | str:
    """Analyse every ccr result under `path` (a folder or storage URI); returns the output folder
    (a Path when it is local, else its URI without query).

    The output (default PATH/analysis) may be a URI too: it is made in a local folder, then uploaded.
    """
    root = Storage(path)
    dest = Storage(out) if out else root.child("analysis")
    c = collect(root)
    if dest.local_path is not None:
        _write_analysis(root, c, dest.local_path, by_order)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _write_analysis(root, c, Path(tmp), by_order)
            dest.upload_dir(tmp, "")
    log.info("analysis of %d runs written to %s", len(c.runs), dest.display())
    return dest.local_path or dest.display()


def _write_analysis(root: Storage, c, out: Path, by_order: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    long = tidy(c)
    summary = per_run_summary(c)
    agg = aggregate(summary, by_order)
    if not long.empty:
        long.to_parquet(out / "tidy.parquet", index=False)
        long.to_csv(out / "tidy.csv", index=False)
    summary.to_csv(out / "per_run.csv", index=False)
    agg.to_csv(out / "aggregate.csv", index=False)
    ks = sorted(int(k) for k in agg["k"].unique()) if not agg.empty else []  # whatever eval.ks measured
    tables = {k: markdown_table(agg, k) for k in ks}
    md = [f"# ccr analysis of `{root.display()}`", "", f"{len(c.runs)} runs ({len(c.incomplete)} incomplete), "
          f"{len(c.corrupt)} corrupt result files, {len(c.missing)} runs without results, {len(c.failed)} failed.", ""]
    for k, t in tables.items():
        md += [f"## Average final recall, forgetting and BWT at K={k} (mean ± std over seeds; best in bold)", "", t, ""]
    (out / "summary.md").write_text("\n".join(md))

    figs: list[Path] = []
    if not long.empty:
        k = ks[0] if ks else 1  # plots show the smallest K measured (R@1 unless eval.ks says otherwise)
        for f in (plots.heatmaps(long, out, k=k), plots.task_curves(long, out, k=k),
                  plots.forgetting_bars(summary, out, k=k), plots.quality_vs_cost(summary, out, k=k)):
            if f:
                figs.append(f)
        figs += plots.anatomy_plots(long, out, k=k)

    problems = []
    problems += [f"corrupt: {html.escape(p)} ({html.escape(why)})" for p, why in c.corrupt]
    problems += [f"incomplete (still running or stopped): {html.escape(r)}" for r in c.incomplete]
    problems += [f"no results yet: {html.escape(r)}" for r in c.missing]
    problems += [f"failed trial: {html.escape(r)}: <pre>{html.escape(e)}</pre>" for r, e in c.failed]
    strategies = ", ".join(sorted(summary.strategy.unique())) if not summary.empty else "-"
    body = [
        f"<h1>ccr analysis: {html.escape(root.display())}</h1>",
        f"<p>{len(c.runs)} runs analysed. Strategies: {html.escape(strategies)}.</p>",
        "<h2>Failed, missing and incomplete runs</h2>",
        "<ul>" + "".join(f"<li>{p}</li>" for p in problems) + "</ul>" if problems else "<p>None.</p>",
    ]
    for k, t in tables.items():
        body += [f"<h2>Summary at K={k}</h2>", _md_to_html(t)]
    body += ["<h2>Plots</h2>", *[_img(f) for f in figs]]
    body += ["<h2>Configuration</h2>", f"<pre>{html.escape(_sweep_config(root, c.runs))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}figure{margin:1em 0}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>ccr analysis</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    (out / "status.json").write_text(json.dumps({"runs": len(c.runs), "incomplete": c.incomplete,
                                                 "corrupt": c.corrupt, "missing": c.missing,
                                                 "failed": [r for r, _ in c.failed]}, indent=1))


def load_tidy(out: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "tidy.parquet")
