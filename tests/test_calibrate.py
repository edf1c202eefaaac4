"""`ccr calibrate` and `ccr analyze --calibration`: the record measures the study's own model, data path and
index; runs of that model and device are priced with it (embedding and index building), others by the median of
their runs, and a bad record is one line before anything is read."""

import json

import numpy as np
import pandas as pd
import pytest

from ccr.cli import main
from ccr.study.runner import Study

OVER = ["data.n_tasks=2", "train.epochs=1", "train.threads=1", "index.approx=ivfpq", "index.pq_m=4",
        "index.pq_nbits=4", "index.nlist=4", "index.compare=[no_reindex]", "eval.anatomy=false"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("cal")
    over = [*TINY, f"data.cache_dir={root / 'cache'}", *OVER]
    sets = [x for o in over for x in ("--set", o)]
    assert main(["calibrate", *sets, "--seconds", "0.3", "--index-vectors", "3000", "--rounds", "3", "--out",
                 str(root / "cal.json")]) == 0
    from ccr.study.configure import load_config

    res = Study(load_config(None, over), root / "runs" / "a", progress=False).run()
    return root, json.loads((root / "cal.json").read_text()), res


def test_the_record_measures_the_studys_model_and_index(calibrated, capsys):
    root, rec, res = calibrated
    assert rec["kind"] == "ccr-calibration" and rec["device"] == "cpu" and rec["threads"] == 1
    assert rec["items"] == "dataset"  # a study without distractors: its dataset's items
    assert rec["device_name"] == res["embedding"]["device_name"]  # the same hardware name as a run records
    assert rec["model"] == res["config"]["model"] and rec["eval_batch_size"] == res["config"]["eval"]["batch_size"]
    for m in ("images", "captions"):
        e = rec["embedding"][m]
        assert e["seconds"] >= 0.3 and e["items"] == e["calls"] * e["call_items"]  # whole calls, after warm-up
        assert e["call_items"] >= 8 * e["batch_size"]
        assert e["per_second"] == pytest.approx(e["items"] / e["seconds"], rel=1e-3)
        assert e["call_per_second"]["min"] <= e["call_per_second"]["median"] <= e["call_per_second"]["max"]
        # three rounds, images and captions in turn: the record's rate is the median round's
        assert len(e["rounds"]) == 3 and e["per_second"] == sorted(e["rounds"])[1] == rec[f"{m}_per_second"]
    i = rec["index"]
    assert i["kind"] == "ivfpq" and i["dim"] == 16 and i["vectors"] == 3000 and i["train_vectors"] == 3000
    assert i["sizes"] == {"nlist": 4, "pq_m": 4, "pq_nbits": 4, "opq": 0} and i["add_seconds_per_million"] > 0
    assert rec["versions"]["torch"] and "commit" in rec["git"]


def test_runs_of_the_calibrated_model_are_priced_by_it_and_others_by_their_median(calibrated, tmp_path):
    import shutil

    root, rec, res = calibrated
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs" / "a", runs / "a")
    shutil.copytree(root / "runs" / "a", runs / "other")
    p = runs / "other" / "results.json"
    other = json.loads(p.read_text())
    other["config"]["model"]["embed_dim"] = 32  # another model: the calibration is not its
    other["strategy"] = "ewc"
    p.write_text(json.dumps(other))
    assert main(["analyze", str(runs), "--out", str(tmp_path / "an"), "--gallery-size", "1000000000",
                 "--calibration", str(root / "cal.json")]) == 0
    rows = pd.read_csv(tmp_path / "an" / "cost_at_scale.csv").set_index(["strategy", "policy"])
    ips, cps = rec["images_per_second"], rec["captions_per_second"]
    per_vector, train_s = rec["index"]["add_seconds_per_million"] / 1e6, rec["index"]["train_seconds"]
    alpha = 10**9 / 24  # two tiny tasks of 12 test images
    for policy in ("reindex", "no_reindex"):
        row = rows.loc[("finetune", policy)]
        assert row.priced_by == "calibration" and row.index_priced_by == "calibration"
        assert row.images_per_second == pytest.approx(ips) and row.captions_per_second == pytest.approx(cps)
        step = res["by_policy"][policy]["index_cost"]["per_step"][1]  # the one update: task 2
        trained = [t for ts in res["by_policy"][policy]["index_quality"]["trainings"].values() for t in ts
                   if t["step"] == 1]
        assert row.embed_hours == pytest.approx(alpha * (step["images"] / ips + step["captions"] / cps) / 3600)
        assert row.index_hours == pytest.approx((alpha * (step["images"] + step["captions"]) * per_vector
                                                 + len(trained) * train_s) / 3600)
        assert row.device_hours == pytest.approx(row.embed_hours + row.index_hours)
        assert row.device_hours_last == pytest.approx(row.device_hours)  # one update: the mean is the last
    # reindex retrains both galleries' quantizers at the update (it re-embedded everything); no_reindex never does
    assert rows.loc[("finetune", "reindex"), "index_hours"] > rows.loc[("finetune", "no_reindex"), "index_hours"]
    o = rows.loc[("ewc", "reindex")]  # not calibrated: the median throughput, and no index building priced
    assert o.priced_by == "median of 1 run(s)" and pd.isna(o.index_priced_by) and pd.isna(o.index_hours)
    assert o.images_per_second == pytest.approx(res["embedding"]["images"]["per_second"])
    assert o.device_hours == pytest.approx(o.embed_hours)
    assert "`priced_by`" in (tmp_path / "an" / "summary.md").read_text()


def test_a_calibration_of_other_hardware_prices_nothing(calibrated, tmp_path):
    from ccr.analysis.economics import Scale, cost_rows
    from ccr.analysis.load import collect

    root, rec, res = calibrated
    other = dict(rec, device_name="NVIDIA H200")
    rows = cost_rows(collect(root / "runs").runs, Scale(10**6, calibrations=(other,)), 1)
    assert set(rows.priced_by) == {"median of 1 run(s)"}


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not JSON"),
    ('{"kind": "something"}', "not a calibration record"),
    ('{"kind": "ccr-calibration", "version": 99}', "calibration version 99"),
    (None, "images_per_second is -1"),
    (None, "index rates are missing"),
])
def test_a_bad_calibration_is_one_line_before_anything_is_read(content, needle, calibrated, tmp_path, capsys):
    root, rec, _ = calibrated
    if content is None:
        bad = dict(rec, images_per_second=-1) if "images" in needle else dict(rec, index={"kind": "flat"})
        content = json.dumps(bad)
    (tmp_path / "c.json").write_text(content)
    assert main(["analyze", str(tmp_path / "nothing"), "--gallery-size", "10", "--calibration",
                 str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "nothing").exists()


def test_calibration_options_are_checked(calibrated, tmp_path, capsys):
    root, rec, _ = calibrated
    assert main(["analyze", str(tmp_path), "--calibration", str(root / "cal.json")]) == 2
    assert "--calibration needs --gallery-size N" in capsys.readouterr().err
    two = ["--calibration", str(root / "cal.json")] * 2
    assert main(["analyze", str(tmp_path), "--gallery-size", "10", *two]) == 2
    assert "calibrate the same model and device" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--gallery-size", "10", "--calibration", str(tmp_path / "none.json")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert main(["calibrate", "--seconds", "0"]) == 2
    assert "--seconds must be above 0" in capsys.readouterr().err
    assert main(["calibrate", "--rounds", "0"]) == 2
    assert "--rounds at least 1, got 10, 200000 and 0" in capsys.readouterr().err
    assert main(["calibrate", "--set", "index.approx=ivfpq", "--set", "index.pq_m=5"]) == 2
    assert "index.pq_m': 5 sub-quantizers do not divide the 64-dimensional" in capsys.readouterr().err
    assert np.isfinite(rec["images_per_second"])


def test_a_calibration_written_to_a_bucket_prices_the_runs_read_from_it(calibrated, s3, tmp_path):
    """--out and --calibration as storage URIs (moto's S3 on 127.0.0.1, its endpoint in the URI's options)."""
    from ccr.analysis.economics import read_calibrations
    from tests.conftest import TINY

    root, rec, _ = calibrated
    uri = s3.uri("ccr", "calibrations/tiny.json")
    sets = [x for o in [*TINY, f"data.cache_dir={root / 'cache'}", *OVER] for x in ("--set", o)]
    assert main(["calibrate", *sets, "--seconds", "0.2", "--index-vectors", "500", "--out", uri]) == 0
    (got,) = read_calibrations([uri])
    assert got["model"] == rec["model"] and got["index"]["vectors"] == 500
    assert main(["analyze", str(root / "runs"), "--out", str(tmp_path / "an"), "--gallery-size", "1000",
                 "--calibration", uri]) == 0
    assert set(pd.read_csv(tmp_path / "an" / "cost_at_scale.csv").priced_by) == {"calibration"}


def test_a_study_with_distractors_is_calibrated_on_them(tiny_cfg, tmp_path, monkeypatch):
    """With eval.distractors the calibration embeds what a re-index at scale embeds: the distractors, read from
    their shards and decoded (and only they: the dataset's items are never asked for)."""
    from ccr.data.webdataset import WebDatasetImages
    from ccr.study.calibrate import calibrate
    from tests.webdataset_fixture import make_shards

    shards = make_shards(tmp_path / "shards", 40, per_shard=20)
    read = []
    load = WebDatasetImages.load
    monkeypatch.setattr(WebDatasetImages, "load", lambda self, ids: read.append(len(ids)) or load(self, ids))
    rec = calibrate(tiny_cfg("train.threads=1", f"eval.distractors={shards}"), 0.2, index_vectors=500)
    assert rec["items"] == "distractors" and rec["images_per_second"] > 0 and rec["captions_per_second"] > 0
    assert sum(read) >= rec["embedding"]["images"]["items"]  # every image it timed came from the shards
