"""Credentials in URIs never leave: a password in the MLflow address and S3 keys in storage URIs, used for real
(a live `mlflow server`, moto's S3 on 127.0.0.1), appear in no file ccr writes, no line it prints, and no
MLflow parameter; bytes a server sends are printed only as printable characters."""

from __future__ import annotations

import json
import logging

import pytest

from ccr.cli import main
from ccr.io.redact import SafeFormatter, printable, redact
from ccr.io.storage import Storage
from tests.cli import _sets
from tests.karpathy_fixture import make_karpathy, upload_karpathy

SECRET, PASSWORD = "ccr-test-secret", "Pa55w0rd-never-shown"


@pytest.mark.parametrize("text, shown", [
    ("http://user:Pa55@host:5000/x", "http://***@host:5000/x"),
    ("s3://KEY:SECRET@bucket/a/b?endpoint_override=h:9000", "s3://***@bucket/a/b?endpoint_override=h:9000"),
    ("s3://bucket/a?access_key=K&secret_key=S&scheme=http", "s3://bucket/a?access_key=***&secret_key=***&scheme=http"),
    ("at 'https://u:p@h/' and gs://x:y@b/c", "at 'https://***@h/' and gs://***@b/c"),
    ("a/plain/path and user@example.org", "a/plain/path and user@example.org"),
])
def test_redact_hides_the_credentials_of_every_uri(text, shown):
    assert redact(text) == shown


def test_log_lines_are_redacted_and_printable():
    rec = logging.LogRecord("ccr", logging.WARNING, __file__, 1, "server said %r at %s", ("\x00\xff\x1b[2J", "x"),
                            None)
    line = SafeFormatter().format(logging.LogRecord("ccr", logging.WARNING, __file__, 1, "to %s: %s",
                                                    ("http://u:pw@h", "\x1b[31mred\x00"), None))
    assert "pw" not in line and "\x1b" not in line and "\x00" not in line and "?[31mred?" in line
    assert "\x00" not in SafeFormatter().format(rec)
    assert printable("tab\tnew\nline\x07") == "tab\tnew\nline?"


def _everything_under(store: Storage) -> bytes:
    return b"".join(store.read_bytes(f) for f in store.files())


@pytest.mark.slow
def test_no_credential_reaches_a_file_a_line_or_mlflow(s3, tmp_path, monkeypatch, capsys, tiny_overrides):
    from mlflow.tracking import MlflowClient

    from tests.test_tracking import MlflowServer

    server = MlflowServer(tmp_path / "mlflow")
    try:
        monkeypatch.setenv("CCR_CACHE", str(tmp_path / "cache"))
        local = make_karpathy(tmp_path / "src", per_task=8, test_per_task=4)
        plain = upload_karpathy(local, Storage(s3.uri("ccr", "redact/data")))
        uris = {k: v.replace("s3://ccr/", f"s3://ccr-test:{SECRET}@ccr/") for k, v in plain.items()}
        out = s3.uri("ccr", "redact/out").replace("s3://ccr/", f"s3://ccr-test:{SECRET}@ccr/")
        tracking = server.uri.replace("http://", f"http://user:{PASSWORD}@")
        sets = [*tiny_overrides, "data.kind=karpathy", *(f"data.{k}={v}" for k, v in uris.items()),
                "data.n_tasks=2", "train.epochs=1", f"tracking.mlflow={tracking}", "tracking.experiment=redact"]
        assert main(["data", *_sets(sets)]) == 0
        assert main(["data", "--json", *_sets(sets)]) == 0
        assert main(["run", "--out", out, *_sets(sets)]) == 0
        assert main(["analyze", out]) == 0
        assert main(["run", "--out", out, *_sets([*sets, "train.epochs=x"])]) == 2  # an error names the URI too
        printed = "".join(capsys.readouterr())
        assert "s3://***@ccr/redact/data" in printed  # shown, with its credentials hidden
        store = Storage(s3.uri("ccr", "redact/out"))
        assert {"results.json", "config.yaml", "log.txt", "tracking.json", "analysis/report.html"} <= set(store.files())
        assert any(f.startswith("checkpoints/") for f in store.files())
        written = _everything_under(store)
        cache = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*.jsonl"))
        for secret in (SECRET, PASSWORD):
            assert secret not in printed, printed[-3000:]
            assert secret.encode() not in written and secret.encode() not in cache
        res = json.loads(Storage(s3.uri("ccr", "redact/out")).read_text("results.json"))
        assert res["config"]["tracking"]["mlflow"] == f"http://***@127.0.0.1:{server.port}"
        assert res["config"]["data"]["path"].startswith("s3://***@ccr/redact/data/")
        client = MlflowClient(tracking_uri=server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("redact").experiment_id])
        assert run.info.status == "FINISHED"  # the password was used, and is nowhere in the run
        assert PASSWORD not in json.dumps(run.data.params) + json.dumps(run.data.tags)
        assert run.data.params["tracking.mlflow"] == f"http://***@127.0.0.1:{server.port}"
    finally:
        server.stop()
