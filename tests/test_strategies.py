"""Each strategy's mechanism, tested directly; and the hooks are reached."""

import numpy as np
import pytest
import torch

from ccr.config.schema import ConfigError
from ccr.strategies import REGISTRY, Strategy, build_strategy, register
from ccr.strategies.distill import embedding_distillation, similarity_distillation
from ccr.strategies.replay import herding
from ccr.study.configure import load_config
from ccr.study.runner import Study


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
                p.copy_(ewc.centre[n] + eps * direction[n]) if n in ewc.centre else None
        values.append(ewc.penalty(s.model).item())
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4, rel=1e-2) and values[2] / values[1] == pytest.approx(4, rel=1e-2)


def test_online_ewc_keeps_one_running_term(tiny_cfg, tmp_path):
    s = make_study(tiny_cfg, tmp_path, "strategy.name=ewc", "strategy.params.ewc.online=true")
    s.strategy.after_task(s.context(0), s.model)
    f0 = {k: v.clone() for k, v in s.strategy.fisher.items()}
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(0.01)
    s.strategy.after_task(s.context(1), s.model)
    k = next(iter(f0))
    assert not torch.equal(s.strategy.fisher[k], f0[k]) and (s.strategy.fisher[k] >= 0.9 * f0[k]).all()
    assert torch.equal(s.strategy.centre[k], dict(s.model.named_parameters())[k].detach())  # the newest θ*


def test_ewc_state_does_not_grow_and_equals_the_sum_of_per_task_penalties(tiny_cfg, tmp_path):
    """Three tasks' penalties folded into one quadratic: the same value and gradient as the sum of the
    three (Kirkpatrick et al.'s form), with a state the size of two models after any number of tasks."""
    from ccr.io.checkpoint import to_bytes

    s = make_study(tiny_cfg, tmp_path, "strategy.name=ewc", "data.n_tasks=3")
    ewc, gen = s.strategy, torch.Generator().manual_seed(0)
    named = dict(s.model.named_parameters())
    tasks, sizes = [], []
    for step in range(3):
        with torch.no_grad():
            for p in s.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        fisher = ewc.estimate_fisher(s.context(step), s.model)
        anchor = {n: named[n].detach().clone() for n in fisher}
        tasks.append((anchor, fisher))
        ewc.add(fisher, anchor)
        sizes.append(len(to_bytes(ewc.state_dict())))
    assert sizes[2] == sizes[1] == sizes[0]
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    by_hand = 0.5 * ewc.params.lam * sum((f[n] * (named[n] - a[n]) ** 2).sum() for a, f in tasks for n in f)
    folded = ewc.penalty(s.model)
    assert float(folded.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-4)
    g1 = torch.autograd.grad(by_hand, [named[n] for n in tasks[0][1]])
    g2 = torch.autograd.grad(folded, [named[n] for n in tasks[0][1]])
    for a, b in zip(g1, g2, strict=True):  # float32: compared as vectors (single entries may cancel)
        assert float((a - b).norm()) <= 1e-4 * float(a.norm()) + 1e-6
    # a checkpoint written by ccr 0.1 (one (anchor, Fisher) per task) loads into the same state
    old = type(ewc)(ewc.params)
    old.load_state_dict({"terms": tasks})
    assert float(old.penalty(s.model).detach()) == pytest.approx(float(by_hand.detach()), rel=1e-4)


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


def test_agem_projection_rule():
    """The projected gradient never conflicts with the reference, changes only along it, and a gradient that
    does not conflict is left alone."""
    from ccr.strategies.gradient import project

    gen = torch.Generator().manual_seed(0)
    seen = {True: 0, False: 0}
    for _ in range(200):
        g, ref = (torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(2))
        new, changed = project(g, ref)
        seen[changed] += 1
        assert torch.dot(new, ref) >= -1e-9 * ref.norm() * g.norm()
        if changed:
            assert torch.dot(g, ref) < 0 and abs(float(torch.dot(new, ref))) < 1e-9 * float(ref.norm() * g.norm())
            delta = new - g  # the smallest change: a multiple of the reference direction
            assert torch.allclose(delta, (torch.dot(delta, ref) / torch.dot(ref, ref)) * ref)
        else:
            assert torch.equal(new, g)
    assert seen[True] > 50 and seen[False] > 50


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


def test_agem_after_backward_on_the_model(tiny_cfg, tmp_path):
    """On the real model: after `after_backward` the gradient has a non-negative inner product with the
    memory's gradient (recomputed independently with the same memory batch), and a gradient made to
    conflict with it is projected."""
    import copy

    from ccr.models import losses
    from ccr.strategies.context import make_batch, sample_captions

    s = make_study(tiny_cfg, tmp_path, "strategy.name=agem", "data.n_tasks=2", "strategy.params.agem.memory=40")
    agem = s.strategy
    ctx0, ctx1 = s.context(0), s.context(1)
    agem.before_task(ctx0, s.model)
    agem.after_task(ctx0, s.model)
    assert len(agem.memory) == 40 and set(s.ds.image_task[agem.memory.pairs()[0]]) == {s.order[0]}
    agem.before_task(ctx1, s.model)
    ids = s.ds.image_ids(s.order[1], "train")[:16]
    caps = sample_captions(ctx1, ids, np.random.default_rng(0))
    b = make_batch(ctx1, ids, caps, len(ids), s.device)
    params = [p for p in s.model.parameters() if p.requires_grad]
    for conflict in (False, True):
        s.model.zero_grad()
        img, txt = s.model(b.images, b.input_ids, b.attention_mask)
        losses.infonce(img, txt, s.model.logit_scale)["contrastive_loss"].backward()
        rng = copy.deepcopy(agem.rng)
        ref = agem.reference_gradient(ctx1, s.model, [p for p in params if p.grad is not None])
        if conflict:  # the gradient made to point against the memory's
            for p, r in zip(params, torch.split(-2 * ref, [p.numel() for p in params]), strict=True):
                p.grad.copy_(r.view_as(p))
        before = agem.projected
        agem.rng = copy.deepcopy(rng)
        agem.after_backward(ctx1, s.model, b)
        assert float(torch.dot(_grads(s.model), ref)) >= -1e-4 * float(ref.norm() * _grads(s.model).norm() + 1e-12)
        if conflict:
            assert agem.projected == before + 1
            assert abs(float(torch.dot(_grads(s.model), ref))) < 1e-3 * float(ref.norm()) ** 2


def test_agem_averages_the_reference_over_ranks(tiny_cfg, tmp_path):
    """Under data parallelism the reference gradient goes through the all-reduce the Ray layer provides."""
    s = make_study(tiny_cfg, tmp_path, "strategy.name=agem", "data.n_tasks=2")
    agem, calls = s.strategy, []

    def fake_mean(t):
        calls.append(t.shape)
        return t

    ctx0 = s.context(0)
    agem.before_task(ctx0, s.model)
    agem.after_task(ctx0, s.model)
    ctx = s.context(1)
    ctx.world_size, ctx.all_reduce_mean = 2, fake_mean
    agem.before_task(ctx, s.model)
    params = [p for p in s.model.parameters() if p.requires_grad]
    agem.reference_gradient(ctx, s.model, params)
    assert calls == [torch.Size([sum(p.numel() for p in params)])]


def test_agem_end_to_end(tiny_cfg, tmp_path):
    res = Study(tiny_cfg("strategy.name=agem", "data.n_tasks=2"), tmp_path, progress=False).run()
    assert res["status"] == "complete" and res["strategy"] == "agem"
    assert res["config"]["strategy"]["params"]["agem"] == {"memory": 200, "ref_batch": 32}


def test_configure_optimizer_hook_reaches_the_optimizer(tiny_cfg, tmp_path):
    """A strategy builds the optimizer (here: SGD, the projection heads at 10x the rate); the per-task
    schedule scales each group's own learning rate."""
    seen = {}

    @register
    class TwoRates(Strategy):
        """Test strategy: parameter groups with their own learning rates."""

        name = "two_rates_for_test"
        source = "test"

        def configure_optimizer(self, ctx, model, params):
            heads = [p for n, p in model.named_parameters() if "proj" in n and p.requires_grad]
            ids = {id(p) for p in heads}
            rest = [p for p in params if id(p) not in ids]
            opt = torch.optim.SGD([{"params": rest, "lr": 0.01}, {"params": heads, "lr": 0.1}], lr=0.01)
            seen["opt"] = opt
            return opt

        def after_backward(self, ctx, model, batch):
            seen.setdefault("lrs", []).append([g["lr"] for g in seen["opt"].param_groups])

    try:
        Study(tiny_cfg("strategy.name=two_rates_for_test", "data.n_tasks=1"), tmp_path, progress=False).run()
    finally:
        REGISTRY.pop("two_rates_for_test")
    assert isinstance(seen["opt"], torch.optim.SGD)
    lrs = np.array(seen["lrs"][1:])  # lr of the previous step, as set by the schedule
    assert np.allclose(lrs[:, 1], 10 * lrs[:, 0]) and lrs[:, 0].max() <= 0.01 + 1e-12


def test_two_strategies_that_build_the_optimizer_are_refused():
    @register
    class Opt1(Strategy):
        """Test."""

        name = "opt1_for_test"
        source = "test"

        def configure_optimizer(self, ctx, model, params):
            return torch.optim.SGD(params, lr=0.1)

    @register
    class Opt2(Opt1):
        """Test."""

        name = "opt2_for_test"

    try:
        with pytest.raises(ConfigError, match="builds the optimizer"):
            load_config(None, ["strategy.name=[opt1_for_test,opt2_for_test]"])
    finally:
        REGISTRY.pop("opt1_for_test")
        REGISTRY.pop("opt2_for_test")
