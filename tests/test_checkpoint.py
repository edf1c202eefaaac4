"""Checkpoints that load without running code (ccr/io/checkpoint.py)."""

from __future__ import annotations

import os

import numpy as np
import torch

from ccr.cli import main
from ccr.io.checkpoint import from_bytes
from ccr.study.runner import checkpoint_path


# ---- checkpoints ---------------------------------------------------------------------------------
class _RunsCode:
    """What an attacker pickles into a checkpoint: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_checkpoint_is_refused_and_runs_nothing(tiny_overrides, tmp_path, capsys):
    sets = [x for o in [*tiny_overrides, "data.n_tasks=2"] for x in ("--set", o)]
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 0
    ck = checkpoint_path(tmp_path / "o", 1, ["round", "boxes"])
    good = from_bytes(ck.read_bytes(), "task 1")
    assert isinstance(good["evaluator"]["states"]["reindex"]["galleries"]["images"], dict)  # numpy round trip
    marker = tmp_path / "pwned"
    torch.save({**good, "step": _RunsCode(marker)}, ck)  # a colleague's (or a bucket's) file, tampered with
    (tmp_path / "o" / "results.json").unlink()
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {ck}" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated: named too
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    assert f"checkpoint {ck} cannot be read" in capsys.readouterr().err
    ck.write_bytes(b"")  # zero bytes: the same
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", *sets]) == 1
    assert f"checkpoint {ck} cannot be read" in capsys.readouterr().err


def test_checkpoint_pack_round_trips_numpy_exactly():
    from ccr.io.checkpoint import to_bytes

    obj = {"a": np.arange(5, dtype=np.int64), "b": (np.ones((2, 3), np.float32), [np.float64(2.5)]),
           "c": np.array(["x", "yz"]), "t": torch.ones(2), 3: "k"}
    back = from_bytes(to_bytes(obj), "x")
    assert back["a"].dtype == np.int64 and np.array_equal(back["a"], obj["a"]) and back[3] == "k"
    assert isinstance(back["b"], tuple) and back["b"][0].dtype == np.float32 and back["b"][1] == [2.5]
    assert back["c"].tolist() == ["x", "yz"] and torch.equal(back["t"], obj["t"])
