"""Ray Train: global-batch equivalence, a 2-worker study, refusal of unsafe strategies, fault tolerance."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from ccr.config.schema import ConfigError  # noqa: E402
from ccr.study.configure import load_config  # noqa: E402
from ccr.study.runner import Study  # noqa: E402
from tests.conftest import TINY, counts  # noqa: E402

pytestmark = pytest.mark.slow


def _model_and_batch():
    from bench.common import synthetic_dataset
    from ccr.models import build_model

    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1000, cfg.train)
    ds, tokens = synthetic_dataset({"t": 16}, 16, 8)
    return cfg, model, ds.images.array[:16], tokens.input_ids[:16], tokens.attention_mask[:16]


def _loss_worker(config):
    import ray.train
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ccr.distributed.train import gather_with_grad
    from ccr.models import losses

    cfg, model, img, ids, mask = _model_and_batch()
    rank = ray.train.get_context().get_world_rank()
    ddp = DDP(model)
    lo, hi = rank * 8, rank * 8 + 8  # batch B=8 per worker, global 16
    i, t = ddp(img[lo:hi], ids[lo:hi], mask[lo:hi])
    loss = losses.infonce(gather_with_grad(i), gather_with_grad(t), model.logit_scale)["contrastive_loss"]
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    with open(f"{config['out']}/rank{rank}.json", "w") as f:
        json.dump({"loss": float(loss), "grad": grad.tolist()}, f)
    ray.train.report({"loss": float(loss)})


def test_two_workers_batch_b_equal_one_worker_batch_2b(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ccr.models import losses

    TorchTrainer(_loss_worker, train_loop_config={"out": str(tmp_path)}, scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(storage_path=str(tmp_path), name="eq")).fit()
    cfg, model, img, ids, mask = _model_and_batch()
    i, t = model(img, ids, mask)
    loss = losses.infonce(i, t, model.logit_scale)["contrastive_loss"]
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for rank in (0, 1):  # after DDP's all-reduce every rank holds the full-batch gradient
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        np.testing.assert_allclose(np.array(got["grad"]), grad.numpy(), rtol=1e-3, atol=1e-6)


def test_unsafe_strategy_is_refused_before_start(tmp_path):
    from ccr.distributed.runner import make_study
    from ccr.strategies import REGISTRY, Strategy, register

    @register
    class Unsafe(Strategy):
        """Keeps per-rank state that would diverge."""

        name = "unsafe_for_test"
        source = "test"
        supports_distributed = False

    try:
        with pytest.raises(ConfigError, match="does not support data-parallel"):
            make_study(load_config(None, [*TINY, "strategy.name=unsafe_for_test", "resources.workers=2"]), tmp_path)
    finally:
        REGISTRY.pop("unsafe_for_test")
    assert not (tmp_path / "ray").exists()


def _run(tmp_path, name, *extra, on_batch=None):
    from ccr.distributed.runner import make_study, run_study

    cfg = load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.n_tasks=2", "resources.workers=2",
                             "train.epochs=3", *extra])
    return run_study(make_study(cfg, tmp_path / name, progress=False, on_batch=on_batch))


def kill_once(marker: Path, step: int, rank: int, batch: int = 0):
    """A fault the test installs: rank `rank` exits at batch `batch` of task `step`, once (a marker file
    on the shared disk remembers that it fired, so the restarted worker group runs through)."""
    import os

    def on_batch(s: int, r: int, b: int) -> None:
        if (s, r, b) == (step, rank, batch) and not marker.exists():
            marker.write_text("killed")
            os._exit(1)

    return on_batch


def test_worker_killed_in_task_2_resumes_from_task_1(ray_local, tmp_path):
    clean = _run(tmp_path, "clean", "strategy.name=[replay,ewc]")
    assert clean["status"] == "complete" and clean["task_order"] == ["round", "boxes"]
    for key in ("recall", "metrics", "index_cost", "by_policy", "anatomy", "provenance"):
        assert key in clean
    marker = tmp_path / "killed.marker"
    hurt = _run(tmp_path, "hurt", "strategy.name=[replay,ewc]", "resources.max_failures=2",
                on_batch=kill_once(marker, step=1, rank=1))
    assert marker.read_text() == "killed"  # the fault really fired
    assert hurt["recall"] == clean["recall"]
    assert counts(hurt["index_cost"]) == counts(clean["index_cost"])
    # the restarted worker group resumed after task 1 (index 0) instead of starting over
    assert clean["resumes"] == [] and hurt["resumes"] == [0]


@pytest.mark.parametrize("model", ["clip", "towers"])
def test_pretrained_models_two_workers_equal_one_worker_global_batch(ray_local, tmp_path, model):
    """A complete CLIP, and pretrained towers with parameters no ccr loss reaches (a ViT saved with its pooler,
    loaded without it; a SigLIP folder as the text tower, whose head ccr's pooling skips): 2 workers x B train
    the first task's objective of 1 worker x 2B (mean loss to 1e-5). Without find_unused_parameters DDP
    stops at the second step."""
    from ccr.distributed.runner import make_study, run_study
    from tests.karpathy_fixture import make_karpathy
    from tests.pretrained_fixture import make_complete, make_vit_with_pooler

    files = make_karpathy(tmp_path / "data", per_task=24, test_per_task=4)
    weights = [f"model.pretrained={make_complete(tmp_path / 'clip', 'clip')}"] if model == "clip" else [
        f"model.image.pretrained={make_vit_with_pooler(tmp_path / 'vit')}",
        f"model.text.pretrained={make_complete(tmp_path / 'siglip', 'siglip')}",
        "model.image.image_size=16", "model.text.max_length=16", "model.embed_dim=16"]
    base = ["data.kind=karpathy", f"data.path={files['path']}", f"data.images={files['images']}",
            f"data.tasks_file={files['tasks_file']}", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2",
            "train.warmup_steps=1", "train.threads=1", "tasks.order=[animal]", "eval.val=false", *weights]
    one = run_study(make_study(load_config(None, [*base, "train.batch_size=8"]), tmp_path / "one", progress=False))
    two = run_study(make_study(load_config(None, [*base, "train.batch_size=4", "resources.workers=2",
                                                  "resources.cpus_per_worker=0.5"]), tmp_path / "two", progress=False))
    assert one["train"][0]["steps"] == two["train"][0]["steps"] >= 4
    assert two["train"][0]["mean_loss"] == pytest.approx(one["train"][0]["mean_loss"], rel=1e-5)


# per-worker sizes (train.batch_size, a replay or reference batch) double for the one process of the same step
DDP_CASES = {
    # LoRA adapters, merged after task 1 and started again, and CKC's projector on the gathered batch
    "cclip (lora)": ([], ["strategy.name=cclip", "model.adapter.kind=lora", "model.adapter.r=4"]),
    # one study for several strategies where they combine: each Ray Train start costs more than their terms
    "replay,ewc,lwf,compat,wiseft": (["strategy.params.replay.batch=4"], [
        "strategy.name=[replay,ewc,lwf,compat,wiseft]", "strategy.params.wiseft.alpha=0.7"]),
    "agem,magmax": (["strategy.params.agem.ref_batch=4"], ["strategy.name=[agem,magmax]"]),
    # reference data: a task the sequence never learns (a pretraining stage would differ: its batch is 2B vs B)
    "zscl": (["strategy.params.zscl.batch_size=4"],
             ["strategy.name=zscl", "data.n_tasks=3", "tasks.order=[round,boxes]",
              "strategy.params.zscl.reference=[triangles]"]),
}


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_every_strategy_trains_the_same_objective_on_two_workers(ray_local, tmp_path, case):
    """2 workers x B equal 1 process x 2B on the loss of the second task (to 1e-5): every term of every
    strategy declared DDP-safe is computed on the global batch (gathered rows, one draw of replay, reference
    and Fisher batches for all ranks)."""
    from ccr.distributed.runner import make_study, run_study

    per_worker, common = DDP_CASES[case]
    base = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.n_tasks=2", "train.epochs=1", "train.threads=1",
            "eval.anatomy=false", *common]
    doubled = [f"{k}={int(v) * 2}" for k, v in (s.split("=") for s in per_worker)]
    one = Study(load_config(None, [*base, "train.batch_size=32", *doubled]), tmp_path / "one", progress=False).run()
    two = run_study(make_study(load_config(None, [*base, "train.batch_size=16", "resources.workers=2", *per_worker]),
                               tmp_path / "two", progress=False))
    assert one["train"][1]["steps"] == two["train"][1]["steps"] > 0
    assert two["train"][1]["mean_loss"] == pytest.approx(one["train"][1]["mean_loss"], rel=1e-5), case
