"""analysis/: aggregation against hand-computed numbers, corrupt files, plots and report, round trip."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ccr
from ccr.analysis.aggregate import aggregate, markdown_table
from ccr.analysis.html_report import analyze, load_tidy
from ccr.analysis.load import collect, per_run_summary, tidy
from ccr.cli import main


def fake_result(strategy, seed, final, forget, cost=100, order=("a", "b")):
    """A minimal results.json: 2 tasks, recall matrices chosen so the summary is easy to check."""
    m = [[final + forget, None], [final, final]]
    summ = {"avg_final_recall": {d: {"1": final} for d in ("i2t", "t2i")},
            "forgetting": {d: {"1": forget} for d in ("i2t", "t2i")},
            "bwt": {d: {"1": -forget} for d in ("i2t", "t2i")}}
    pol = {"recall": {d: {"1": m} for d in ("i2t", "t2i")}, "summary": summ,
           "index_cost": {"images_embedded": cost, "captions_embedded": 2 * cost, "per_step": []}}
    return {"status": "complete", "config": {"seed": seed, "strategy": {"name": strategy}, "train": {"lr": 0.1}},
            "seed": seed, "task_order": list(order), "strategy": strategy, "policy": "reindex", "scope": "task",
            "recall": pol["recall"], "summary": summ, "index_cost": pol["index_cost"], "by_policy": {"reindex": pol}}


@pytest.fixture
def results_dir(tmp_path):
    vals = {"finetune": [(10.0, 30.0), (20.0, 40.0), (30.0, 20.0)], "ewc": [(25.0, 5.0), (35.0, 15.0)]}
    for s, rows in vals.items():
        for seed, (final, forget) in enumerate(rows):
            p = tmp_path / f"{s}-{seed}"
            p.mkdir()
            (p / "results.json").write_text(json.dumps(fake_result(s, seed, final, forget)))
    return tmp_path


def test_aggregate_hand_computed(results_dir):
    c = collect(results_dir)
    agg = aggregate(per_run_summary(c))
    ft = agg[(agg.strategy == "finetune") & (agg.direction == "t2i") & (agg.k == 1)].iloc[0]
    assert ft.avg_final_recall_mean == pytest.approx(20.0)
    assert ft.avg_final_recall_std == pytest.approx(10.0)  # sample std of 10, 20, 30
    assert ft.avg_final_recall_count == 3
    assert ft.forgetting_mean == pytest.approx(30.0) and ft.forgetting_std == pytest.approx(10.0)
    assert ft.index_cost_mean == 300
    ewc = agg[(agg.strategy == "ewc") & (agg.direction == "i2t")].iloc[0]
    assert ewc.avg_final_recall_mean == pytest.approx(30.0)
    assert ewc.avg_final_recall_std == pytest.approx(np.std([25, 35], ddof=1))
    assert ewc.bwt_mean == pytest.approx(-10.0) and ewc.avg_final_recall_count == 2
    md = markdown_table(agg, 1)
    assert "**30.0 ± 7.1**" in md  # best final recall in bold
    assert "**10.0 ± 7.1**" in md  # least forgetting in bold


def test_corrupt_and_incomplete_files_are_reported_and_skipped(results_dir):
    (results_dir / "broken").mkdir()
    (results_dir / "broken" / "results.json").write_text('{"status": "comp')
    (results_dir / "wrong").mkdir()
    (results_dir / "wrong" / "results.json").write_text('{"status": "complete"}')
    (results_dir / "pending").mkdir()
    (results_dir / "pending" / "config.yaml").write_text("seed: 0\n")
    running = fake_result("lwf", 0, 1.0, 1.0)
    running["status"] = "running"
    (results_dir / "running").mkdir()
    (results_dir / "running" / "results.json").write_text(json.dumps(running))
    out = analyze(results_dir)
    status = json.loads((out / "status.json").read_text())
    assert {p.split("/")[-2] for p, _ in status["corrupt"]} == {"broken", "wrong"}
    assert status["missing"] == ["pending"] and status["incomplete"] == ["running"] and status["runs"] == 6
    page = (out / "report.html").read_text()
    assert "broken" in page and "pending" in page and "running" in page


def test_tidy_table_shape_and_round_trip(results_dir, tmp_path):
    c = collect(results_dir)
    long = tidy(c)
    # 5 runs x 2 directions x 1 K x 3 defined cells
    assert len(long) == 5 * 2 * 3
    assert set(long.columns) >= {"run", "strategy", "policy", "task_order", "seed", "step", "task", "direction",
                                 "k", "metric", "value"}
    out = analyze(results_dir, tmp_path / "an")
    back = load_tidy(out)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), long.reset_index(drop=True), check_dtype=False)
    csv = pd.read_csv(out / "tidy.csv")
    assert len(csv) == len(long)


def test_swept_keys_become_columns(tmp_path):
    for lr in (0.1, 0.2):
        r = fake_result("finetune", 0, 10.0, 1.0)
        r["config"]["train"]["lr"] = lr
        (tmp_path / f"lr{lr}").mkdir()
        (tmp_path / f"lr{lr}" / "results.json").write_text(json.dumps(r))
    agg = aggregate(per_run_summary(collect(tmp_path)))
    assert "cfg.train.lr" in agg.columns and sorted(agg["cfg.train.lr"].unique()) == [0.1, 0.2]


def test_results_under_old_and_new_key_names_are_one_study(tmp_path):
    """A run written before the `resources` section (train.workers, index.shards) and one written after it are
    the same study in an analysis: no column for the renamed keys, one group. Keys that change no number
    (declared result=False) are never columns either."""
    old = fake_result("finetune", 0, 10.0, 1.0)
    old["config"]["train"].update({"workers": 1, "max_failures": 2})
    old["config"]["index"] = {"shards": 1}
    new = fake_result("finetune", 1, 12.0, 1.0)
    new["config"]["resources"] = {"workers": 1, "shards": 1, "max_failures": 0}
    new["config"]["eval"] = {"batch_size": 64}
    for name, r in (("old", old), ("new", new)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    c = collect(tmp_path)
    assert c.runs["old"]["config"]["resources"] == {"workers": 1, "max_failures": 2, "shards": 1}
    agg = aggregate(per_run_summary(c))
    assert not [col for col in agg.columns if col.startswith("cfg.")] and set(agg["avg_final_recall_count"]) == {2}


@pytest.fixture(scope="module")
def tiny_analysis(tmp_path_factory):
    """Two strategies x two seeds of a real 2-task study with both policies, analysed."""
    from ccr.study.configure import load_config
    from ccr.study.runner import Study
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("an")
    for s in ("finetune", "lwf"):
        for seed in (0, 1):
            cfg = load_config(None, [*TINY, f"data.cache_dir={root / 'cache'}", f"strategy.name={s}", f"seed={seed}",
                                     "data.n_tasks=2", "index.compare=[no_reindex]"])
            Study(cfg, root / "runs" / f"{s}-{seed}", progress=False).run()
    return root, analyze(root / "runs")


FIGURES = ("forgetting_R1.png", "quality_vs_cost_R1.png", "heatmaps_t2i_R1.png", "heatmaps_i2t_R1.png",
           "task_curves_t2i_R1.png", "task_curves_i2t_R1.png", "compatibility_grid.png", "stability.png",
           "stability_vs_forgetting.png", "effect_no_reindex_t2i_R1.png", "effect_no_reindex_i2t_R1.png")


@pytest.mark.slow
def test_plots_and_report_from_a_real_tiny_study(tiny_analysis):
    root, out = tiny_analysis
    for name in (*FIGURES, "report.html", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64") == len(FIGURES) and "lwf" in page
    md = (out / "summary.md").read_text()
    assert "| finetune | no_reindex |" in md and "| lwf | reindex |" in md
    # the report explains what it shows and what produced it
    for term in ("R@K", "F@K, forgetting", "BWT@K", "rsum", "index cost", "mean ± std, n", "bold"):
        assert f"<dt>{term}" in page, term
    for fact in ("<th>seeds</th><td>0, 1</td>", "<th>torch threads per run</th>", "round → boxes",
                 f"<th>ccr / torch / ray / python</th><td>{ccr.__version__} / {torch.__version__}",
                 "<th>study time</th>"):
        assert fact in page, fact
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and (runs.seconds > 0).all() and set(runs.seed) == {0, 1}


@pytest.mark.slow
def test_plots_name_tasks_and_label_axes(tiny_analysis):
    """Task names (not indices) on the axes, titles and axis labels, one legend per meaning; error bars
    only where a mean rests on more than one run."""
    from ccr.analysis import plots

    root, out = tiny_analysis
    long, summary = tidy(collect(root / "runs")), per_run_summary(collect(root / "runs"))
    assert plots.task_names(long) == (["round", "boxes"], "task")
    mixed = long.assign(task_order=np.where(long.seed == 0, "round>boxes", "boxes>round"))
    assert plots.task_names(mixed) == (["1", "2"], "task (position in its run's order)")
    import matplotlib.pyplot as plt

    seen = {}
    real_save = plots._save

    def keep(fig, path):
        seen[path.name] = {"title": fig._suptitle.get_text() if fig._suptitle else "",
                           "axes": [(a.get_title(), a.get_xlabel(), a.get_ylabel(),
                                     [t.get_text() for t in a.get_xticklabels()],
                                     [t.get_text() for t in a.get_yticklabels()], len(a.containers),
                                     sum(len(c.lines[1]) if hasattr(c, "lines") and c.lines[1] else 0
                                         for c in a.containers if type(c).__name__ == "ErrorbarContainer"))
                                    for a in fig.axes if a.get_visible() and a.axison],
                           "legends": [t.get_text() for lg in fig.legends for t in lg.texts]}
        return real_save(fig, path)

    plots._save = keep
    try:
        plots.heatmaps(long, out, "t2i")
        plots.task_curves(long, out, "i2t")
        plots.forgetting_bars(summary, out)
        plots.forgetting_bars(summary[summary.seed == 0], out)
        plots.quality_vs_cost(summary, out)
    finally:
        plots._save = real_save
        plt.close("all")
    h = seen["heatmaps_t2i_R1.png"]
    assert "t2i R@1 (%)" in h["title"]
    panel = h["axes"][0]
    assert panel[0] == "finetune / reindex" and panel[3] == ["round", "boxes"]
    assert panel[4] == ["θ0 (zero-shot)", "after round", "after boxes"]  # the zero-shot row above the matrix
    c = seen["task_curves_i2t_R1.png"]
    assert c["axes"][0][3] == ["θ0", "after round", "after boxes"] and c["axes"][0][2] == "i2t R@1 (%)"
    assert {"round", "boxes", "reindex", "no_reindex"} <= set(c["legends"])
    f = seen["forgetting_R1.png"]  # the second call, one run per bar: no error caps at all
    assert f["axes"][0][2] == "forgetting of R@1 (points)" and "1 run per bar" in f["title"]
    assert all(ax[6] == 0 for ax in f["axes"])
    q = seen["quality_vs_cost_R1.png"]
    assert {"finetune", "lwf"} <= set(q["legends"]) and {"reindex", "no_reindex"} <= set(q["legends"])
    assert "index cost" in q["axes"][0][1]


@pytest.mark.slow
def test_report_reads_in_a_headless_browser(tiny_analysis, tmp_path):
    """scripts/report_screenshot.sh in real Chromium: the page renders at 1280 px with nothing spilling
    past its column (figures scale to it). Skipped where no Chromium is installed."""
    import shutil
    import subprocess

    from PIL import Image

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    _, out = tiny_analysis
    png = tmp_path / "report.png"
    subprocess.run(["bash", "scripts/report_screenshot.sh", str(out / "report.html"), str(png), "3000"],
                   check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    im = np.asarray(Image.open(png).convert("L"))
    assert im.shape[1] == 1280
    inked = np.where((im < 200).any(axis=0))[0]  # columns with text or figure in them
    assert inked.min() > 40 and inked.max() < 1280 - 40, (inked.min(), inked.max())  # a centred column
    assert (im < 200).any(axis=1).sum() > 1500  # figures drawn down the page, not broken images


def _two_policy_result(strategy, seed, final_re, final_no, order=("a", "b")):
    """reindex and no_reindex of one run; forgetting is 10 under reindex, 10 + (final_re − final_no) under
    no_reindex (the same recall right after each task)."""
    r = fake_result(strategy, seed, final_re, 10.0, order=order)
    no = fake_result(strategy, seed, final_no, 10.0 + final_re - final_no, order=order)
    for d in ("i2t", "t2i"):  # the diagonal is the same for both policies
        no["by_policy"]["reindex"]["recall"][d]["1"][0][0] = final_re + 10.0
    r["by_policy"]["no_reindex"] = no["by_policy"]["reindex"]
    return r


def test_paired_effects_match_a_hand_computation(tmp_path, capsys):
    """Pairs share a seed; the interval is mean ± t(0.975, n−1)·sd/√n; * only where it excludes 0."""
    from ccr.cli import main

    # finetune: no_reindex − reindex = −1, −2, −3 over seeds 0..2: mean −2, sd 1, half-width 4.303/√3
    # lwf: −6, −5, −7: mean −6, sd 1: excludes 0
    for s, (re, no) in enumerate([(20.0, 19.0), (22.0, 20.0), (25.0, 22.0)]):
        (tmp_path / f"ft{s}").mkdir()
        (tmp_path / f"ft{s}" / "results.json").write_text(json.dumps(_two_policy_result("finetune", s, re, no)))
    for s, (re, no) in enumerate([(30.0, 24.0), (30.0, 25.0), (31.0, 24.0)]):
        (tmp_path / f"lwf{s}").mkdir()
        (tmp_path / f"lwf{s}" / "results.json").write_text(json.dumps(_two_policy_result("lwf", s, re, no)))
    assert main(["analyze", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    half = 4.303 / 3 ** 0.5
    assert f"| finetune | no_reindex − reindex | {-2:+.1f} [{-2 - half:+.1f}, {-2 + half:+.1f}] |" in out, out
    assert f"| lwf | no_reindex − reindex | {-6:+.1f} [{-6 - half:+.1f}, {-6 + half:+.1f}] * |" in out, out
    # the console gets the tables a user came for (the main one first), not the explanations
    assert out.index("Average final recall, forgetting and BWT at K=1") < out.index("policy − reindex, K=1")
    assert "| lwf | no_reindex |" in out and "Each effect is the mean difference" not in out
    e = pd.read_csv(tmp_path / "analysis" / "effects.csv")
    ft = e[(e.factor == "policy") & (e.strategy == "finetune")].iloc[0]
    assert ft["t2i R@1 diff"] == pytest.approx(-2.0) and ft["t2i R@1 low"] == pytest.approx(-2 - half)
    assert ft["t2i F@1 diff"] == pytest.approx(2.0) and ft["pairs"] == 3
    # strategy effects pair runs by seed within a policy: lwf − finetune under reindex = 10, 8, 6
    st = e[(e.factor == "strategy") & (e.policy == "reindex")].iloc[0]
    assert st["strategy"] == "lwf" and st["i2t R@1 diff"] == pytest.approx(8.0)
    assert st["i2t R@1 low"] == pytest.approx(8 - 4.303 * 2 / 3 ** 0.5)
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert "Paired effects" in page and "Student" in page


def test_tags_stand_for_the_keys_they_set_and_strategy_parameters_pair_with_finetune(tmp_path):
    """A sweep's named cases (tags.regime) set several keys, one of them a parameter of one strategy only:
    the analysis shows one regime column, and lwf − finetune still pairs within each regime; without tags,
    a swept lwf parameter splits lwf's rows and still pairs with finetune's."""
    from ccr.analysis.effects import paired_effects

    for regime, weight, gain in (("a", 1.0, 4.0), ("b", 3.0, 8.0)):
        for s in range(3):
            ft = fake_result("finetune", s, 20.0 + s, 5.0)
            lwf = fake_result("lwf", s, 20.0 + s + gain + (s == 1), 5.0)
            for r in (ft, lwf):
                r["config"]["tags"] = {"regime": regime}
                r["config"]["model"] = {"freeze": "none" if regime == "a" else "backbone"}
            lwf["config"]["strategy"]["params"] = {"lwf": {"emb_weight": weight}}
            for name, r in ((f"ft-{regime}{s}", ft), (f"lwf-{regime}{s}", lwf)):
                (tmp_path / name).mkdir()
                (tmp_path / name / "results.json").write_text(json.dumps(r))
    summary = per_run_summary(collect(tmp_path))
    assert [c for c in summary.columns if c.startswith("cfg.")] == ["cfg.tags.regime"]
    e = paired_effects(summary, "strategy", "finetune", 1)
    assert list(e["cfg.tags.regime"]) == ["a", "b"] and list(e["pairs"]) == [3, 3]
    assert e["t2i R@1 diff"].tolist() == pytest.approx([4 + 1 / 3, 8 + 1 / 3])

    for p in tmp_path.glob("*/results.json"):  # no tags: model.freeze and the lwf weight are columns
        r = json.loads(p.read_text())
        del r["config"]["tags"]
        p.write_text(json.dumps(r))
    summary = per_run_summary(collect(tmp_path))
    assert {"cfg.model.freeze", "cfg.strategy.params.lwf.emb_weight"} <= set(summary.columns)
    e = paired_effects(summary, "strategy", "finetune", 1)
    got = dict(zip(e["cfg.strategy.params.lwf.emb_weight"], e["t2i R@1 diff"], strict=True))
    assert got == pytest.approx({1.0: 4 + 1 / 3, 3.0: 8 + 1 / 3}) and list(e["pairs"]) == [3, 3]


def test_t_quantiles_and_one_pair():
    from ccr.analysis.effects import interval, t975

    assert t975(1) == 12.706 and t975(30) == 2.042 and t975(1000) == 1.96
    mean, lo, hi, n = interval([3.0])
    assert mean == 3.0 and n == 1 and np.isnan(lo) and np.isnan(hi)


def test_analyze_of_a_missing_path_is_an_error_and_creates_nothing(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_analysis_of_runs_of_mixed_configs_and_versions(tiny_cfg, tmp_path):
    """A config key some results lack (written by another ccr version or source) is a missing value in the
    tables and plots, never a crash: the analysis completes and writes its report."""
    from ccr.analysis.html_report import analyze
    from ccr.study.runner import Study

    for name, lr in (("a", 0.003), ("b", 0.004), ("c", 0.005)):
        Study(tiny_cfg("data.n_tasks=2", "train.epochs=1", f"train.lr={lr}"), tmp_path / "runs" / name,
              progress=False).run()
    res = json.loads((tmp_path / "runs" / "a" / "results.json").read_text())
    del res["config"]["train"]["lr"], res["config"]["tasks"]["pretrain_cache"]
    (tmp_path / "runs" / "a" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path / "runs")
    an = tmp_path / "runs" / "analysis"
    assert (an / "report.html").is_file() and (an / "stability_vs_forgetting.png").is_file()
    assert "cfg.train.lr" in (an / "per_run.csv").read_text()


def test_a_study_under_a_folder_named_analysis_is_analysed(tiny_cfg, tmp_path):
    from ccr.analysis.load import collect
    from ccr.study.runner import Study

    Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "analysis" / "one", progress=False).run()
    assert list(collect(tmp_path / "runs").runs) == ["analysis/one"]




def test_a_saved_figure_keeps_labels_longer_than_itself(tmp_path):
    """A y label taller than its figure (stability.png's was) is in the file whole: the saved bounds grow to it."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ccr.analysis.plots import DPI, _save

    fig, ax = plt.subplots(figsize=(3, 1.5))
    ax.set_ylabel("a label far longer than the figure is tall, which would be cut")
    with Image.open(_save(fig, tmp_path / "f.png")) as im:
        assert im.height > 1.5 * DPI * 1.2
