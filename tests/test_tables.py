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


def test_chance_recall_equals_counting_every_ranking():
    """A random ranking's R@K, against every ordering of a small gallery counted one by one."""
    import itertools

    from ccr.measure.metrics import chance_recall

    for gallery, relevant, k in [(6, 1, 1), (6, 2, 2), (5, 2, 3), (7, 3, 1), (4, 1, 4), (4, 2, 3)]:
        orders = list(itertools.permutations(range(gallery)))
        hits = sum(any(i < relevant for i in o[:k]) for o in orders)
        assert chance_recall(k, gallery, relevant) == __import__("pytest").approx(100 * hits / len(orders))


def test_small_galleries_are_warned_of_marked_and_chance_is_printed(tiny_cfg, tmp_path, caplog):
    from ccr.measure.tables import _fmt, render
    from ccr.study.runner import Study

    res = Study(tiny_cfg("data.n_tasks=2", "train.epochs=1", "data.test_per_task=6"), tmp_path / "r",
                progress=False).run()
    assert "R@10: K is at least the 6 test images of task" in caplog.text  # said before training
    text = render(res)
    chance = [ln for ln in text.splitlines() if ln.startswith("chance")]
    assert len(chance) == 2 and chance[0].split()[1:] == ["16.7", "16.7"]  # R@1 among 6 images
    assert "rsum*" in text and "* R@10: K is at least the size of a task's gallery (6 test images in" in text
    assert _fmt(-0.04) == "  0.0" and "-0.0" not in text
