"""A sweep's progress lines (ccr/distributed/progress.py): the time-left estimate, a line per task learned."""

from __future__ import annotations

import time

import pytest


def test_time_left_estimate():

    from ccr.distributed.progress import duration, time_left

    assert time_left([], 3, 1, []) is None and time_left([10.0], 0, 0, []) is None
    now = time.time()
    # 4 trials left (2 of them running for 5 s already), 10 s each, 2 at a time: (40 - 10) / 2 = 15 s
    assert time_left([10.0, 10.0], 4, 2, [now - 5, now - 5]) == pytest.approx(15.0, abs=0.1)
    assert duration(75) == "1 min 15 s" and duration(9.4) == "9 s"


def test_progress_estimate_does_not_jump_when_a_trial_ends():
    """Between a trial's end and the next start, one fewer runs: the estimate still spreads the work over
    the two trials the cluster runs at once."""
    import io
    import re
    from types import SimpleNamespace

    from ccr.distributed.progress import SweepProgress

    out = io.StringIO()
    p = SweepProgress(6, stream=out)
    trials = [SimpleNamespace(trial_id=str(i), last_result={}) for i in range(3)]
    p.on_trial_start(0, [], trials[0])
    p.on_trial_start(0, [], trials[1])
    p.running["0"] -= 10.0  # trial 0 ran 10 s
    p.running["1"] -= 10.0
    p.on_trial_complete(0, [], trials[0])
    p.on_trial_start(0, [], trials[2])
    ends, starts = [re.search(r"about (\d+) s left", ln) for ln in out.getvalue().splitlines()[2:4]]
    # 5 left at 10 s each, trial 1 done with 10 s of its share: (50 - 10) / 2 = 20 s; then trial 2 starts
    assert int(ends.group(1)) == 20 and int(starts.group(1)) == 20


def test_a_line_for_each_task_a_running_trial_learns(tiny_cfg, tmp_path):
    """What a study writes after each task (its results.json, status running) becomes one progress line per task
    per trial on the sweep's console; a task is said once."""
    import io
    from types import SimpleNamespace

    from ccr.distributed.progress import SweepProgress
    from ccr.io.storage import Storage
    from ccr.study.runner import Study

    study = Study(tiny_cfg("data.n_tasks=2", "train.epochs=1"), tmp_path / "runs" / "seed=0", progress=False)
    study.build()
    study.run_task(0)  # the study after its first task, as a running trial's is
    out = io.StringIO()
    p = SweepProgress(2, label=lambda t: t.name, stream=out, runs=Storage(tmp_path / "runs"), every=0.0)
    trial = SimpleNamespace(trial_id="a", name="seed=0", last_result={})
    p.on_trial_start(0, [trial], trial)
    p.on_step_end(0, [trial])
    p.on_step_end(0, [trial])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "seed=0: task 1/2 (round) learned, loss " in lines[1] and "t2i/R@1" in lines[1], lines
