"""Each strategy's mechanism, tested directly; and the hooks are reached."""

import numpy as np
import pytest
import torch

from ccr.config import ConfigError, load_config
from ccr.strategies import REGISTRY, Strategy, build_strategy, register
from ccr.strategies.distill import embedding_distillation, similarity_distillation
from ccr.strategies.replay import herding
from ccr.study import Study


def make_study(tiny_cfg, tmp_path, *extra):
    s = Study(tiny_cfg(*extra), tmp_path, progress=False)
    s.out.mkdir(parents=True, exist_ok=True)
    s.build()
    return s


def test_every_strategy_declares_source_and_ddp_safety():
    for name, cls in REGISTRY.items():
        assert cls.source, name
        assert isinstance(cls.supports_distributed, bool), name
        assert cls.__doc__, name


def test_ewc_penalty_zero_at_anchor_and_grows_quadratically(tiny_cfg, tmp_path):
    s = make_study(tiny_cfg, tmp_path, "strategy.name=ewc")
    ewc = s.strategy
    ewc.after_task(s.context(0), s.model)
    assert ewc.penalty(s.model).item() == 0.0
    direction = {n: torch.randn_like(p) for n, p in s.model.named_parameters()}
    values = []
    for eps in (1e-3, 2e-3, 4e-3):
        with torch.no_grad():
            for n, p in s.model.named_parameters():
                p.copy_(ewc.terms[0][0][n] + eps * direction[n]) if n in ewc.terms[0][0] else None
        values.append(ewc.penalty(s.model).item())
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4, rel=1e-2) and values[2] / values[1] == pytest.approx(4, rel=1e-2)


def test_online_ewc_keeps_one_running_term(tiny_cfg, tmp_path):
    s = make_study(tiny_cfg, tmp_path, "strategy.name=ewc", "strategy.params.ewc.online=true")
    s.strategy.after_task(s.context(0), s.model)
    f0 = {k: v.clone() for k, v in s.strategy.terms[0][1].items()}
    s.strategy.after_task(s.context(1), s.model)
    assert len(s.strategy.terms) == 1
    k = next(iter(f0))
    assert not torch.equal(s.strategy.terms[0][1][k], f0[k])


def test_distillation_losses_zero_when_models_agree():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert embedding_distillation(img, img).abs().item() < 1e-6
    assert similarity_distillation(img, txt, img, txt, 0.1).abs().item() < 1e-6
    other = torch.nn.functional.normalize(img + 0.5 * torch.randn(8, 16), dim=-1)
    assert embedding_distillation(other, img).item() > 0.01
    assert similarity_distillation(other, txt, img, txt, 0.1).item() > 1e-4


def test_lwf_and_compat_old_model_is_frozen_and_terms_vanish_at_equality(tiny_cfg, tmp_path):
    for name in ("lwf", "compat"):
        s = make_study(tiny_cfg, tmp_path / name, f"strategy.name={name}")
        ctx = s.context(1)
        s.strategy.before_task(ctx, s.model)
        old = s.strategy.old
        assert not old.training and all(not p.requires_grad for p in old.parameters())
        from ccr.train import make_batch

        ids = s.ds.image_ids(ctx.task, "train")[:8]
        b = make_batch(ctx, ids, s.ds.captions_of(ids)[::2][:8], 8, s.device)
        s.model.eval()
        b.img_emb, b.txt_emb = s.model(b.images, b.input_ids, b.attention_mask)
        terms = s.strategy.loss_terms(ctx, s.model, b)
        if name == "lwf":
            assert all(v.abs().item() < 1e-5 for v in terms.values())
        else:
            assert terms["compat_reg_loss"].abs().item() < 1e-5 and terms["compat_cross_loss"].item() > 0
        sum(terms.values()).backward()
        assert all(p.grad is None for p in old.parameters())


def test_freeze_keeps_frozen_parameters_unchanged(tiny_cfg, tmp_path):
    s = make_study(tiny_cfg, tmp_path, "strategy.name=freeze", "strategy.params.freeze.part=image_side")
    s.run_task(0)
    img_before = {n: p.detach().clone() for n, p in s.model.image_encoder.named_parameters()}
    proj_before = s.model.image_proj.weight.detach().clone()
    txt_before = s.model.text_proj.weight.detach().clone()
    s.run_task(1)
    for n, p in s.model.image_encoder.named_parameters():
        assert torch.equal(p, img_before[n]), n
    assert torch.equal(s.model.image_proj.weight, proj_before)
    assert not torch.equal(s.model.text_proj.weight, txt_before)  # the other side still learns


def test_replay_memory_within_budget_and_all_tasks_represented(tiny_cfg, tmp_path):
    for selection in ("reservoir", "herding"):
        s = make_study(tiny_cfg, tmp_path / selection, "strategy.name=replay", "strategy.params.replay.budget=30",
                       f"strategy.params.replay.selection={selection}", "data.n_tasks=3")
        rep = s.strategy
        for step in range(3):
            ctx = s.context(step)
            rep.before_task(ctx, s.model)
            rep.after_task(ctx, s.model)
            imgs, caps = rep.pairs()
            assert len(imgs) <= 30
            assert set(s.ds.image_task[imgs]) == set(s.order[: step + 1])
            assert (s.ds.caption_image[caps] == imgs).all()  # pairs stay matched
        ctx = s.context(2)
        rep.before_task(ctx, s.model)
        a, b = rep.augment_batch(ctx, np.arange(4), np.arange(4))
        assert len(a) == 4 + rep.params.batch and (s.ds.caption_image[b[4:]] == a[4:]).all()


def test_herding_picks_mean_approximating_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    pick = herding(x, 10)
    assert len(set(pick.tolist())) == 10
    rand = np.mean([np.linalg.norm(x[rng.choice(200, 10, replace=False)].mean(0) - x.mean(0)) for _ in range(50)])
    assert np.linalg.norm(x[pick].mean(0) - x.mean(0)) < rand


def test_composition_runs_all_hooks(tiny_cfg, tmp_path):
    res = Study(tiny_cfg("strategy.name=[replay,lwf]", "data.n_tasks=2"), tmp_path, progress=False).run()
    last = res["train"][-1]
    assert "last/lwf_emb_loss" in last and res["strategy"] == "replay+lwf"


def test_every_hook_is_reached(tiny_cfg, tmp_path):
    calls = []

    @register
    class Probe(Strategy):
        """Records hook calls."""

        name = "probe_for_test"
        source = "test"

        def train_items(self, ctx, items):
            calls.append("train_items")
            return items

        def before_task(self, ctx, model):
            calls.append("before_task")

        def augment_batch(self, ctx, i, c):
            calls.append("augment_batch")
            return i, c

        def loss_terms(self, ctx, model, batch):
            calls.append("loss_terms")
            return {}

        def after_task(self, ctx, model):
            calls.append("after_task")

    try:
        Study(tiny_cfg("strategy.name=probe_for_test", "data.n_tasks=2"), tmp_path, progress=False).run()
    finally:
        REGISTRY.pop("probe_for_test")
    assert {"train_items", "before_task", "augment_batch", "loss_terms", "after_task"} <= set(calls)
    assert calls.count("before_task") == 2 and calls.count("after_task") == 2


def test_misspelled_hook_is_refused():
    with pytest.raises(TypeError, match="not a hook"):
        @register
        class Bad(Strategy):
            name = "bad_for_test"

            def before_tsk(self, ctx, model):
                pass


@pytest.mark.parametrize("override, needle", [
    ("strategy.params.ewc.lambda=3", "unknown config key 'strategy.params.ewc.lambda'"),
    ("strategy.params.ewc.lam=high", "strategy.params.ewc.lam"),
    ("strategy.params.replay.selection=best", "reservoir, herding"),
    ("strategy.params.freeze.part=legs", "image, text"),
    ("strategy.params.nosuch.x=1", "unknown strategy 'nosuch'"),
    ("strategy.name=[lwf,lwf]", "named twice"),
])
def test_bad_hyperparameters_are_clear_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_resolved_config_states_strategy_defaults():
    cfg = load_config(None, ["strategy.name=[replay,ewc]", "strategy.params.ewc.lam=5"])
    assert cfg.strategy.params["ewc"]["lam"] == 5 and cfg.strategy.params["replay"]["budget"] == 200
    assert build_strategy(cfg.strategy).names == ["replay", "ewc"]
