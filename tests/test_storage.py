"""Output folders and storage (ccr/io/storage.py): what cannot be written fails before training, and nothing
of a user's is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ccr.cli import main
from tests.cli import _sets


def test_an_output_folder_that_cannot_be_written_fails_before_training(tiny_overrides, capsys):
    target = Path("/sys/ccr-test-out")  # sysfs: not writable, even for root (chmod does not stop root)
    if os.access("/sys", os.W_OK) and not target.exists():
        try:
            target.mkdir()
            target.rmdir()
            pytest.skip("/sys is writable here")
        except OSError:
            pass
    assert main(["run", "--quiet", "--out", str(target), *_sets(tiny_overrides)]) == 2
    err = capsys.readouterr().err
    assert f"ccr: error: cannot write to {target}" in err and "Traceback" not in err


def test_disk_full_names_the_file_and_keeps_what_was_written(tiny_overrides, tmp_path, capsys, monkeypatch):
    import errno

    import ccr.io.storage

    real = ccr.io.storage.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "results.json":  # the partial results after task 1: the disk is full by then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(ccr.io.storage, "atomic_write_bytes", full_disk)
    out, sets = tmp_path / "out", _sets([*tiny_overrides, "data.n_tasks=2"])
    assert main(["run", "--quiet", "--out", str(out), *sets]) == 1
    err = capsys.readouterr().err
    assert f"ccr: error: cannot write {out / 'results.json'}: No space left on device" in err
    assert (out / "checkpoints" / "01_round.pt").is_file() and not (out / ".ccr.lock").exists()
    monkeypatch.setattr(ccr.io.storage, "atomic_write_bytes", real)  # space again: the run resumes after task 1
    assert main(["run", "--quiet", "--out", str(out), *sets]) == 0
    assert json.loads((out / "results.json").read_text())["resumes"] == [0]


def test_an_empty_out_is_refused_and_a_users_folder_loses_nothing(tiny_overrides, tmp_path, capsys, monkeypatch):
    """`--out ""` (an unset $OUT) is an error; in a folder that is not a ccr output, ccr removes nothing it did
    not write: the user's own tokenizer/ and *.tmp files stay, and a foreign tokenizer/ is refused, not replaced."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--out", "", *_sets(tiny_overrides)]) == 2
    assert "--out is empty (an unset variable?)" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / ".draft.tmp").write_text("my draft")
    (mine / "notes" / "a.txt").write_text("keep")
    assert main(["run", "--quiet", "--out", str(mine), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert (mine / ".draft.tmp").read_text() == "my draft" and (mine / "notes" / "a.txt").read_text() == "keep"
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    (other / "tokenizer" / "vocab.txt").write_text("my vocabulary")
    assert main(["run", "--quiet", "--out", str(other), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 2
    assert "is not a tokenizer ccr wrote" in capsys.readouterr().err
    assert (other / "tokenizer" / "vocab.txt").read_text() == "my vocabulary"


def test_read_only_caches_and_scratch(tiny_overrides, tmp_path, capsys, monkeypatch):
    """A read-only data.cache_dir is a warning (the study runs, the cache is not kept); a read-only
    CCR_SCRATCH, needed for a study in an object store, is one line naming it."""
    if os.geteuid() == 0:  # root writes through any mode bits: make a "read-only" folder a file's child
        ro = tmp_path / "file"
        ro.write_text("")
        cache, scratch = ro / "cache", ro / "scratch"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        cache, scratch = tmp_path / "ro" / "cache", tmp_path / "ro" / "scratch"
    sets = [*[o for o in tiny_overrides if not o.startswith("data.cache_dir")], f"data.cache_dir={cache}",
            "data.n_tasks=2", "train.epochs=1"]
    assert main(["run", "--out", str(tmp_path / "o"), *_sets(sets)]) == 0
    assert "cannot write the cache file" in capsys.readouterr().err
    from ccr.io.storage import Storage, StorageError

    monkeypatch.setenv("CCR_SCRATCH", str(scratch))
    with pytest.raises(StorageError, match="point CCR_SCRATCH at a writable folder"):
        Storage("s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http").scratch()


def test_ranks_opening_one_new_output_at_once_never_refuse_it(tmp_path):
    """Ray Train's ranks each build the study on the same --out at the same moment: one's check of the folder
    (a probe file, the folder made for it) must not pull the folder or the probe from under another's, and
    each one's clean-up of leftover temporary files may remove another's probe."""
    import threading

    from ccr.io.storage import open_storage
    from ccr.study.outputs import clean_leftovers

    errors = []
    for round_ in range(20):
        out = tmp_path / f"out{round_}" / "study"

        def rank(out=out) -> None:
            try:
                open_storage(out)
                clean_leftovers(out)
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=rank) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out.is_dir()  # accepted, and there to be written
    assert not errors, errors[:3]
