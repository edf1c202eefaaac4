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

from ccr.analysis import economics, plots
from ccr.analysis.aggregate import aggregate, initial_table, markdown_table
from ccr.analysis.economics import Scale
from ccr.analysis.effects import effects_markdown, paired_effects
from ccr.analysis.load import collect, per_run_summary, provenance_frame, tidy
from ccr.storage import Storage

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


GLOSSARY = [
    ("R@K", "recall at K: the share (%) of queries whose true match is among the K gallery items nearest to "
            "the query. <b>i2t</b>: an image queries the caption gallery; <b>t2i</b>: a caption queries the "
            "image gallery. Each task's test items are queried within that task's gallery (eval.scope=task) "
            "or within the gallery of every task seen so far (eval.scope=seen)."),
    ("R@K (summary tables)", "the average final recall: R@K of every task after the last task, averaged over "
                             "tasks."),
    ("F@K, forgetting", "for each task but the last, the best R@K it had before the last task minus its R@K "
                        "after the last task, averaged over those tasks; in points of R@K. Lower is better; "
                        "0 means nothing was forgotten."),
    ("BWT@K, backward transfer", "for each task but the last, its R@K after the last task minus its R@K right "
                                 "after it was learned, averaged. Negative: learning later tasks hurt it."),
    ("rsum", "R@1 + R@5 + R@10 of both directions after the last task, averaged over tasks (0–600)."),
    ("index cost", "how many embeddings (images + captions) the indexing policy computed over the whole "
                   "sequence to keep its galleries current: reindex embeds every gallery item after every task, "
                   "no_reindex each item once."),
    ("negative flips", "queries of old tasks that were hits at R@K before a model update and are misses after "
                       "it, in % of those queries, averaged over updates (RACT's negative flip rate)."),
    ("backfill", "re-embedding a fraction of the old gallery with the new model after a task, the rest keeping "
                 "its old embeddings: 0 is no_reindex, 1 is reindex (eval.backfill_curve)."),
    ("mean ± std, n", "each number is a mean over n runs (seeds, and task orders unless they are separate "
                      "rows); ± is the standard deviation over those runs, not a confidence interval, and is "
                      "left out when n = 1."),
    ("bold", "the best value of each column: highest recall, BWT and rsum, lowest forgetting and index cost."),
    ("θ0, zero-shot", "the model before the first task (pretrained, or its random initialisation: then chance) "
                      "evaluated on every task; the row above each recall matrix, the first point of each task "
                      "curve. Zero-shot R@K is its mean over tasks."),
    ("transfer", "a task's mean R@K before it was learned (θ0 included), averaged over tasks 2..n: ZSCL's "
                 "Transfer (eval.transfer)."),
    ("control, retention", "R@K on control data, tasks never trained (eval.control), after the last task; "
                           "retention is that in % of θ0's: how much zero-shot capability the sequence eroded."),
]

INITIAL_TITLE = "What the model could do before the first task, and what is left of it"
INITIAL_INTRO = ("θ0 is the model the sequence starts from. Zero-shot: θ0 on every task (mean over tasks). "
                 "Transfer: tasks before they were learned. Control: tasks never trained, after the last task; "
                 "retention: control in % of θ0's. No indexing policy changes these (one row per configuration).")

FIGURE_NOTES = {
    "forgetting": "How much of what each task had reached was lost by the end, per strategy and indexing policy.",
    "quality_vs_cost": "What each indexing policy buys: final recall against the embeddings it computed.",
    "heatmaps": "The recall matrix: row <i>after X</i> is the moment task X has been learned and the galleries "
                "updated; each cell is the recall of the column's task at that moment. The diagonal is how well a "
                "task is learned; what lies below it is what later tasks did to it.",
    "task_curves": "Each task's recall from the moment it is learned to the end of the sequence (the rows of the "
                   "recall matrix as lines).",
    "compatibility_grid": "The anatomy of forgetting: old tasks queried by the last model or the model that "
                          "learned them, against galleries embedded by either. <i>old/old</i> is what the task had; "
                          "<i>new/new</i> what reindex gives; <i>new/old</i> what no_reindex gives.",
    "effect_": "The paired effect of not re-indexing, per configuration (strategy, and the swept settings): the mean "
               "difference to reindex over runs that share a seed and a task order, with its 95 % interval where "
               "there is more than one pair.",
    "stability_vs_forgetting": "One point per run: how stable old tasks' image embeddings stayed (cosine to when "
                               "learned; lower means more drift), against how much they were forgotten under "
                               "reindex.",
    "backfill_curve": "Recall after the last task against the share of the old gallery re-embedded with the "
                      "new model, in each order: 0 % is what no_reindex gives, 100 % what reindex gives.",
    "cost_at_scale": "Each strategy × policy at the gallery size asked for: recall against the device-hours of "
                     "embedding one model update costs; the line is the backfill curve, from embedding only the "
                     "new task to re-embedding everything.",
    "stability": "How little the first task's embeddings move as later tasks are learned (cosine between its "
                 "items' embeddings under the current model and the model that learned it; 1 = not at all).",
}


ECON_TITLE = "Re-indexing: negative flips, backfill and cost at scale"
ECON_INTRO = ("Negative flips: queries of old tasks that were hits at R@K before a model update and are misses "
              "after it, in % of those queries, averaged over updates (RACT's negative flip rate; here the gallery "
              "also grows with each task, which can push an old hit out of the top K without any drift). "
              "Backfill: recall after the last task when a fraction of the old gallery is re-embedded with the new "
              "model (0 = no_reindex, 1 = reindex), in each order. Cost at scale: the embeddings each policy "
              "computes, scaled to a gallery of N images, at the embedding throughput the runs measured on their "
              "device (and at a throughput you give).")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v)) if isinstance(v, str) else str(v)


def frame_markdown(df: pd.DataFrame) -> str:
    """A data frame as a markdown table, numbers to 4 significant digits, thousands separated."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rows = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
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
        figs += [plots.backfill_curves(curve, out, k, d) for d in ("t2i", "i2t")]
    if scale is not None:
        rows = economics.cost_rows(c.runs, scale, k)
        table = economics.cost_table(rows)
        if not table.empty:
            table.to_csv(out / "cost_at_scale.csv", index=False)
            show = [col for col in table.columns if not col.startswith(("images_sequence", "captions_sequence"))]
            text = frame_markdown(table[show])
            (out / "cost_at_scale.md").write_text(f"# Cost at a gallery of {scale.gallery_size:,} images\n\n{text}\n")
            md += [f"## Cost at a gallery of {scale.gallery_size:,} images (per model update, and over the "
                   "sequence; device-hours of embedding" + (f", USD at {scale.price:g} per device-hour"
                                                           if scale.price is not None else "") + ")", "", text, ""]
            figs += [plots.cost_at_scale(table, economics.curve_costs(c.runs, scale, k), out, scale.gallery_size,
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


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em 1.5em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
th{background:#f4f4f4;text-align:left} td{font-variant-numeric:tabular-nums}
table.facts th{width:14em} dl{display:grid;grid-template-columns:13em 1fr;gap:.35em 1em;font-size:14px}
dt{font-weight:600} dd{margin:0} figure{margin:1.2em 0} img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#444;margin-top:.3em} .file{color:#888} details{margin:.6em 0}
summary{cursor:pointer;color:#246} .problems li{color:#a00} pre{background:#f6f6f6;padding:.6em;overflow:auto}
"""


EFFECTS_INTRO = ("Each effect is the mean difference between two runs that share a seed and a task order "
                 "(the same data order and initialisation), over all such pairs, with its 95 % confidence "
                 "interval (Student's t); * marks an interval that excludes 0. Δ R is in points of average "
                 "final recall (higher: the first is better), Δ F in points of forgetting (lower: the first "
                 "forgets less). One pair gives no interval.")


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
    (out / "summary.md").write_text("\n".join(md))
    (out / "effects.md").write_text("\n".join([EFFECTS_INTRO, "", *effect_md]))

    figs: list[Path] = []
    if not long.empty:
        k = ks[0] if ks else 1  # plots show the smallest K measured (R@1 unless eval.ks says otherwise)
        figs += [plots.forgetting_bars(summary, out, k=k), plots.quality_vs_cost(summary, out, k=k)]
        figs += [plots.heatmaps(long, out, direction=d, k=k) for d in ("t2i", "i2t")]
        figs += [plots.task_curves(long, out, direction=d, k=k) for d in ("t2i", "i2t")]
        figs += plots.anatomy_plots(long, out, k=k)
        figs += [plots.stability_vs_forgetting(long, summary, out, k=k)]
        if not effects.empty:
            figs += [plots.effect_intervals(effects, out, k=k, metric=m) for m in ("t2i R", "i2t R")]
    figs += econ_figs
    figs = [f for f in figs if f]

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
    body += ["<h2>Failed, missing and incomplete runs</h2>",
             "<ul class=problems>" + "".join(f"<li>{p}</li>" for p in problems) + "</ul>" if problems
             else "<p>None.</p>"]
    body += ["<h2>Runs and configuration</h2>",
             f"<details><summary>{len(prov)} runs: seed, time, threads, host, commit</summary>{_runs_html(prov)}"
             "</details>",
             f"<details><summary>configuration</summary><pre>{html.escape(_sweep_config(root, c.runs))}</pre>"
             "</details>"]
    page = (f"<!doctype html><html lang=en><head><meta charset='utf-8'><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>ccr analysis</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)
    (out / "status.json").write_text(json.dumps({"runs": len(c.runs), "incomplete": c.incomplete,
                                                 "corrupt": c.corrupt, "missing": c.missing,
                                                 "failed": [r for r, _ in c.failed]}, indent=1))


def load_tidy(out: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out) / "tidy.parquet")
