"""What `ccr run` prints (ccr/measure/tables.py)."""

from __future__ import annotations


def test_one_task_prints_no_forgetting_and_rsum_shows_once(tiny_cfg, tmp_path):
    from ccr.analysis.html_report import analyze
    from ccr.measure.tables import summary_table
    from ccr.study.runner import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.epochs=1"), tmp_path / "runs" / "one", progress=False).run()
    row = summary_table(res).splitlines()[1].split()
    assert row[3] == "-" and row[5] == "-"  # forgetting of i2t and t2i: undefined with one task
    analyze(tmp_path / "runs")
    md = (tmp_path / "runs" / "analysis" / "summary.md").read_text()
    assert md.count("| rsum |") == 1 and "1 run (" in md and "**" not in md.split("## What")[0]
