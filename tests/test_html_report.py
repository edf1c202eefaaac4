"""report.html (ccr/analysis/html_report.py): every field of a result is escaped."""

from __future__ import annotations

import json

from ccr.analysis.html_report import analyze
from tests.test_analysis import fake_result


def test_report_escapes_every_field_of_a_result(tmp_path):
    """report.html is made from results.json files anyone could have written: strategy, policy, device,
    versions and thread counts reach the page as text, never as markup."""

    bad = "<script>alert(1)</script>"
    res = fake_result(bad, 0, 20.0, 5.0)
    res["provenance"] = {"device": bad, "torch_threads": 1, "versions": {"ccr": bad, "torch": bad}, "host": bad,
                         "git": {"commit": bad}}
    res["by_policy"][bad] = res["by_policy"]["reindex"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(res))
    res["provenance"]["torch_threads"] = bad  # not a number: this one is named and skipped, in escaped text
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.json").write_text(json.dumps(res))
    analyze(tmp_path)
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "torch_threads" in page
