"""One study per output folder (ccr/io/locks.py): a second run is refused, a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ccr.cli import main
from tests.cli import REPO, _sets


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "out"
    sets = _sets([*tiny_overrides, "data.n_tasks=2", "train.epochs=30", "train.threads=1"])
    first = subprocess.Popen([sys.executable, "-m", "ccr.cli", "run", "--quiet", "--out", str(out), *sets],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".ccr.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    rc = main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2", "seed=1"])])
    err = capsys.readouterr().err
    assert rc == 1 and f"{out} is in use by another ccr run (pid {first.pid}" in err, err[-1500:]
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert json.loads((out / "results.json").read_text())["seed"] == 0  # the first run's results, whole
    assert not (out / ".ccr.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_overrides, tmp_path, capsys):
    import platform

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ccr.lock").write_text(json.dumps({"pid": int(dead), "host": platform.node(), "what": "run"}))
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert "taking over a lock left by a stopped process" in capsys.readouterr().err
