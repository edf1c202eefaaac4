"""The per-task training loop (ccr/train.py): gradient accumulation, divergence."""

from __future__ import annotations

from ccr.cli import main
from tests.cli import _sets


def test_a_diverged_study_keeps_its_last_good_checkpoint(tiny_overrides, tmp_path, capsys, monkeypatch):
    """Task 1 trains normally; task 2 diverges (after a resume, its loss becomes NaN)."""
    out, sets = tmp_path / "out", [*tiny_overrides, "data.n_tasks=2"]
    assert main(["run", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    (out / "checkpoints" / "02_boxes.pt").unlink()
    (out / "results.json").unlink()
    from ccr.models import losses

    real = losses.contrastive
    monkeypatch.setattr(losses, "contrastive", lambda *a: {k: v * float("nan") for k, v in real(*a).items()})
    rc = main(["run", "--quiet", "--out", str(out), *_sets(sets)])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged on task 'boxes' (task 2 of 2)" in err, err[-1500:]
    assert (out / "checkpoints" / "01_round.pt").is_file() and not (out / "checkpoints" / "02_boxes.pt").exists()


def test_grad_accum_steps_across_epochs(tiny_cfg, tmp_path):
    """train.grad_accum=4 with 3 batches per epoch: the steps count over the task (2 epochs: 6 batches, 2
    steps, the last over 2 batches), never 0 steps and an untrained model."""
    from ccr.study.runner import Study

    res = Study(tiny_cfg("data.n_tasks=1", "train.grad_accum=4", "train.epochs=2"), tmp_path / "o",
                progress=False).run()
    assert res["train"][0]["steps"] == 2
    plain = Study(tiny_cfg("data.n_tasks=1", "train.epochs=2"), tmp_path / "p", progress=False).run()
    assert plain["train"][0]["steps"] == 6
