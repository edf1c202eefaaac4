"""Continual tuning of a pretrained model: LoRA adapters (peft), WiSE-FT, MagMaX and ZSCL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccr.config.schema import ConfigError
from ccr.io.checkpoint import to_bytes as checkpoint_bytes
from ccr.models import build_for
from ccr.study.runner import Study, checkpoint_path

LORA = ["model.adapter.kind=lora", "model.adapter.r=4", "model.adapter.alpha=8", "train.threads=1"]


def test_lora_trains_only_adapters_heads_and_scale_and_resumes_to_the_same_numbers(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*LORA, "data.n_tasks=2")
    study = Study(cfg, tmp_path / "a", progress=False)
    res = study.run()
    model = study.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(("image_proj", "text_proj", "logit_scale"))
                             for n in trainable)
    # the base is the initial model's weights, bit for bit; the adapters and heads moved
    fresh, _, _ = build_for(cfg, study.ds, study.out / "tokenizer", adapter=False)
    base = dict(fresh.named_parameters())
    for n, p in model.named_parameters():
        if n in model.base_names:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n
    assert any(n.endswith("lora_B.default.weight") and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert not torch.equal(model.image_proj.weight, fresh.image_proj.weight)
    # a checkpoint holds what can change plus the base's fingerprint, not the base
    ck = torch.load(checkpoint_path(tmp_path / "a", 1, study.order), weights_only=True)
    assert ck["base_fingerprint"] == model.base_fingerprint and not set(ck["model"]) & model.base_names
    # resume after task 1: the same numbers (the adapter's initialisation is seeded)
    Study(cfg, tmp_path / "b", progress=False).run()
    checkpoint_path(tmp_path / "b", 1, study.order).unlink()
    (tmp_path / "b" / "results.json").unlink()
    again = Study(cfg, tmp_path / "b", progress=False).run()
    assert again["resumes"] == [0] and again["recall"] == res["recall"] and again["zero_shot"] == res["zero_shot"]
    # a checkpoint of other base weights is refused
    ck["base_fingerprint"] = "0" * 24
    checkpoint_path(tmp_path / "b", 1, study.order).write_bytes(checkpoint_bytes(ck))
    (tmp_path / "b" / "results.json").unlink()
    with pytest.raises(ConfigError, match="other base weights"):
        Study(cfg, tmp_path / "b", progress=False).run()


def test_lora_checkpoints_are_a_fraction_of_full_ones(tiny_cfg, tmp_path):
    full = Study(tiny_cfg("data.n_tasks=1", "train.threads=1"), tmp_path / "full", progress=False)
    full.run()
    lora = Study(tiny_cfg(*LORA, "data.n_tasks=1"), tmp_path / "lora", progress=False)
    lora.run()
    size = {k: len(checkpoint_bytes({"m": s.model.state_dict() if k == "full" else
                                      {n: v for n, v in s.model.state_dict().items() if n not in s.model.base_names}}))
            for k, s in (("full", full), ("lora", lora))}
    assert size["lora"] < 0.5 * size["full"]


def test_lora_on_a_pretrained_stage_and_the_strategies_see_only_trainable_parameters(tiny_cfg, tmp_path):
    """The pretraining stage trains the whole model (the adapters' base); its cache ignores the adapter; EWC's
    Fisher covers exactly the trainable parameters."""
    pre = ["data.pretrain_pool=64", "tasks.pretrain=[pool]", "data.n_tasks=2", "train.threads=1"]
    a = Study(tiny_cfg(*pre, "strategy.name=ewc", *LORA), tmp_path / "a", progress=False)
    a.run()
    b = Study(tiny_cfg(*pre, *LORA[:-1], "model.adapter.r=2", "train.threads=1"), tmp_path / "b", progress=False)
    b.build()
    assert a.pretrained["from"] == "trained" and b.pretrained["from"] == "cache"
    trainable = {n for n, p in a.model.named_parameters() if p.requires_grad}
    assert set(a.strategy.fisher) == trainable


def test_wiseft_alpha_0_keeps_theta0_so_every_row_is_the_zero_shot_row(tiny_cfg, tmp_path):
    res = Study(tiny_cfg("strategy.name=wiseft", "strategy.params.wiseft.alpha=0", "index.compare=[no_reindex]",
                         "train.threads=1"), tmp_path / "o", progress=False).run()
    n = len(res["task_order"])
    for p in ("reindex", "no_reindex"):
        for d in ("i2t", "t2i"):
            for k in ("1", "5", "10"):
                m = res["by_policy"][p]["recall"][d][k]
                for s in range(n):
                    assert m[s][: s + 1] == res["zero_shot"]["recall"][d][k][: s + 1], (p, d, k, s)


def test_magmax_trains_as_finetune_and_evaluates_the_max_magnitude_merge(tiny_cfg, tmp_path):
    """MagMaX by its definition: the fine-tuned weights after each task are fine-tuning's own (training goes on
    from them, not from the merge), and the model after task t is θ0 + 0.5 · (per entry, the task vector of
    largest magnitude among τ1..τt), τi = θi_ft - θ0; checked on both tasks' checkpoints."""
    from ccr.io.checkpoint import from_bytes

    common = ["data.n_tasks=2", "train.threads=1", "checkpoint.keep=2", "eval.anatomy=false"]
    ft = Study(tiny_cfg(*common), tmp_path / "ft", progress=False)
    ftres = ft.run()
    mm = Study(tiny_cfg(*common, "strategy.name=magmax"), tmp_path / "mm", progress=False)
    res = mm.run()
    fresh = Study(tiny_cfg(*common), tmp_path / "fresh", progress=False)
    fresh.build()
    theta0 = {n: p.detach() for n, p in fresh.model.named_parameters()}

    def checkpoint(study, step):
        return from_bytes(checkpoint_path(study.out, step, res["task_order"]).read_bytes(), "ck")

    taus = []
    for step in (0, 1):
        f, m = checkpoint(ft, step), checkpoint(mm, step)
        tuned = m["strategy"]["finetuned"]
        for n, t in tuned.items():  # trained exactly as finetune: from θ_ft, never from the merge
            assert torch.equal(t, f["model"][n]), (step, n)
        taus.append({n: tuned[n] - theta0[n] for n in tuned})
        for n, v in m["model"].items():
            if n not in theta0:
                continue
            if step == 0:
                expect = theta0[n] + 0.5 * taus[0][n]
            else:
                expect = theta0[n] + 0.5 * torch.where(taus[1][n].abs() > taus[0][n].abs(), taus[1][n], taus[0][n])
            assert torch.allclose(v, expect, atol=1e-6), (step, n)
    assert res["recall"] != ftres["recall"]  # what is evaluated is the merge


def test_wiseft_alpha_1_is_finetune_and_with_lora_scales_the_update(tiny_cfg, tmp_path):
    ft = Study(tiny_cfg("data.n_tasks=2", "train.threads=1"), tmp_path / "ft", progress=False).run()
    w1 = Study(tiny_cfg("data.n_tasks=2", "train.threads=1", "strategy.name=wiseft",
                        "strategy.params.wiseft.alpha=1"), tmp_path / "w1", progress=False).run()
    assert w1["recall"] == ft["recall"]
    s = Study(tiny_cfg(*LORA, "data.n_tasks=1", "strategy.name=wiseft", "strategy.params.wiseft.alpha=0.25"),
              tmp_path / "wl", progress=False)
    s.build()
    s.strategy.before_task(s.context(0), s.model)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if ".lora_" in n:
                p.normal_()
    trained = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    x = torch.randn(3, s.model.text_encoder.config.hidden_size)
    layer = s.model.text_encoder.encoder.layer[0].attention.self.query
    w0 = layer.base_layer(x)
    before = layer(x)
    s.strategy.after_task(s.context(0), s.model)
    # the adapted layer is now (1 - a) W0 + a (W0 + BA): the base output plus a quarter of the update
    torch.testing.assert_close(layer(x), w0 + 0.25 * (before - w0), rtol=1e-5, atol=1e-6)
    head = dict(s.model.named_parameters())["image_proj.weight"]
    torch.testing.assert_close(head, 0.75 * s.strategy.initial["image_proj.weight"]
                               + 0.25 * trained["image_proj.weight"])


def test_zscl_distils_theta0_on_reference_data_and_averages_weights(tiny_cfg, tmp_path):
    from ccr.strategies.anchored import soft_distillation

    t = torch.randn(4, 6)
    s = torch.randn(4, 6)
    hand = -(torch.softmax(t / 2, 1) * torch.log_softmax(s / 2, 1)).sum(1).mean() * 4
    torch.testing.assert_close(soft_distillation(t, s, 2.0), hand)
    pre = ["data.pretrain_pool=64", "tasks.pretrain=[pool]", "data.n_tasks=2", "train.threads=1",
           "strategy.name=zscl"]
    study = Study(tiny_cfg(*pre), tmp_path / "z", progress=False)
    study.build()
    ctx = study.context(0)
    study.strategy.before_task(ctx, study.model)
    # at θ0 the student is the teacher: the distributions agree, so the loss (the teacher's entropy) is at its
    # minimum and its gradient vanishes
    study.model.eval()
    terms = study.strategy.loss_terms(ctx, study.model, None)
    assert terms["zscl_loss"].item() > 0
    terms["zscl_loss"].backward()
    grads = [p.grad.abs().max().item() for p in study.model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-5
    study.model.zero_grad(set_to_none=True)
    study.model.train()
    res = study.run()
    assert res["status"] == "complete" and all("last/zscl_loss" in s for s in res["train"])


@pytest.mark.parametrize("sets, match", [
    (["strategy.name=zscl"], "zscl needs reference data.* data.pretrain_pool=N adds a task 'pool'"),
    (["model.adapter.kind=lora", "model.adapter.targets=['']"], r"model.adapter.targets': module names"),
    (["model.adapter.kind=lora", "model.adapter.r=64"], r"model.adapter.r': 64 is above the rank of .* a LoRA rank "
                                                        "is at most 32 there"),
    (["strategy.name=zscl", "strategy.params.zscl.reference=[round]"], "are trained or control data"),
    (["strategy.name=zscl", "strategy.params.zscl.reference=[nope]"], r"unknown task\(s\) \['nope'\]"),
    (["strategy.name=wiseft", "strategy.params.wiseft.alpha=1.5"], r"alpha: must be in \[0, 1\]"),
    (["strategy.name=magmax", "strategy.params.magmax.scale=-0.1"], r"magmax.scale: must be in \[0, 1\]"),
    (["strategy.name=magmax", *LORA], "magmax merges task vectors entry by entry: with model.adapter"),
    (["model.adapter.kind=lora", "model.adapter.r=0"], "model.adapter"),
    (["model.adapter.kind=lora", "model.adapter.targets=[nothing_like_this]"], "no module of either encoder"),
])
def test_bad_tuning_settings_are_refused_before_training(tiny_cfg, tmp_path, sets, match):
    from ccr.errors import DataError

    with pytest.raises((ConfigError, DataError), match=match):
        Study(tiny_cfg(*sets), tmp_path / "o", progress=False).run()
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_lora_on_a_complete_clip(tmp_path):
    """LoRA on CLIP's q_proj/v_proj: the base stays the folder's weights."""
    from tests.pretrained_fixture import make_complete
    from tests.test_pretrained import karpathy_cfg

    folder = make_complete(tmp_path / "clip", "clip")
    cfg, _ = karpathy_cfg(tmp_path, folder, *LORA)
    s = Study(cfg, tmp_path / "o", progress=False)
    res = s.run()
    assert res["status"] == "complete"
    assert any("q_proj.lora_A" in n for n in s.model.base_names | {n for n, _ in s.model.named_parameters()})
    import transformers as T

    start = T.CLIPModel.from_pretrained(folder).state_dict()
    got = s.model.state_dict()
    assert torch.equal(got["text_encoder.encoder.layers.0.self_attn.q_proj.base_layer.weight"],
                       start["text_model.encoder.layers.0.self_attn.q_proj.weight"])
    assert np.isfinite(res["train"][-1]["mean_loss"])


def test_optuna_on_the_index_cost_is_allowed_and_test_only_metrics_point_to_a_val_one(tmp_path):
    from ccr.distributed.sweep_spec import load_spec

    base = "set: {data.val_per_task: 4}\noptuna:\n  space: {train.lr: {type: loguniform, low: 0.001, high: 0.01}}\n"
    (tmp_path / "cost.yaml").write_text(base + "  metric: index_cost/embedded\n  mode: min\n")
    assert load_spec(tmp_path / "cost.yaml").optuna["metric"] == "index_cost/embedded"
    (tmp_path / "zs.yaml").write_text(base + "  metric: zero_shot/t2i/R@1\n  mode: max\n")
    with pytest.raises(ConfigError, match="Select on the val split: 'val/t2i/R@1'"):
        load_spec(tmp_path / "zs.yaml")


def test_cclip_merges_each_tasks_adapters_keeps_the_function_and_resumes_to_the_same_numbers(tiny_cfg, tmp_path):
    """C-CLIP between tasks: the adapters' update B A (scaled) folded into the base weights, B zero again and A
    drawn again, the model's embeddings unchanged by it; the merged base weights are in every checkpoint, so a
    resume and `ccr export` read the merged model; and a study without LoRA is refused."""
    from ccr.cli import main
    from ccr.io.checkpoint import from_bytes
    from ccr.models.adapters import merge_and_restart

    cfg = tiny_cfg(*LORA, "data.n_tasks=2", "strategy.name=cclip", "checkpoint.keep=2", "eval.anatomy=false")
    study = Study(cfg, tmp_path / "a", progress=False)
    res = study.run()
    assert "last/cclip_ckc_loss" in res["train"][1] and "last/cclip_ckc_loss" not in res["train"][0]  # task 2 on
    cks = [from_bytes(checkpoint_path(tmp_path / "a", s, study.order).read_bytes(), "ck") for s in (0, 1)]
    for ck in cks:
        assert all(v.abs().sum() == 0 for k, v in ck["model"].items() if k.endswith("lora_B.default.weight"))
        assert any(k.endswith("base_layer.weight") for k in ck["model"])  # the merged weights, kept
    fresh, _, _ = build_for(cfg, study.ds, study.out / "tokenizer", adapter=False)
    merged = [k for k in cks[0]["model"] if k.endswith("base_layer.weight")]
    initial = dict(fresh.named_parameters())
    assert any(not torch.equal(cks[0]["model"][k], initial[k.replace(".base_layer", "")]) for k in merged)

    # the merge itself: the same embeddings before and after, B zero, A drawn again
    model = study.model
    for n, p in model.named_parameters():
        if n.endswith("lora_B.default.weight"):
            p.data.normal_(0, 0.1)
    batch = study.ds.images.load(np.arange(6))
    ids, mask = study.tokens.batch(np.arange(6))
    model.eval()
    before = model(batch, ids, mask)
    a_before = {n: p.clone() for n, p in model.named_parameters() if "lora_A" in n}
    changed = merge_and_restart(model, 5)
    after = model(batch, ids, mask)
    assert changed and all(torch.allclose(x, y, atol=1e-5) for x, y in zip(before, after, strict=True))
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert all(not torch.equal(p, a_before[n]) for n, p in model.named_parameters() if "lora_A" in n)

    # resume after task 1: the merged base is read back, the same numbers
    Study(cfg, tmp_path / "b", progress=False).run()
    checkpoint_path(tmp_path / "b", 1, study.order).unlink()
    (tmp_path / "b" / "results.json").unlink()
    again = Study(cfg, tmp_path / "b", progress=False).run()
    assert again["resumes"] == [0] and again["recall"] == res["recall"]
    # the exported model after task 1 is the merged one
    assert main(["export", str(tmp_path / "a"), "--task", "1", str(tmp_path / "exp")]) == 0
    from safetensors.torch import load_file

    img = list(load_file(str(next((tmp_path / "exp" / "image").glob("*.safetensors")))).values())
    for k in merged:  # each merged weight of the image tower is in the exported tower (under transformers' names)
        if k.startswith("image_encoder."):
            assert any(v.shape == cks[0]["model"][k].shape and torch.allclose(v, cks[0]["model"][k]) for v in img), k
    with pytest.raises(ConfigError, match="cclip learns each task in LoRA adapters"):
        Study(tiny_cfg("strategy.name=cclip"), tmp_path / "c", progress=False)


def test_cclip_ckc_is_the_papers_contrastive_consolidation():
    """CKC (C-CLIP's Eq. 5) on a hand-made batch: h = norm([h_ψ(new image), h_ψ(new text)]), z = norm([old image,
    old text]), InfoNCE both ways at temperature τ, written out here with explicit sums."""
    import math
    from types import SimpleNamespace

    from ccr.strategies.distill import CClip, CClipParams

    torch.manual_seed(0)
    s = CClip(CClipParams(ckc_weight=2.0, tau=0.5))
    s.projector = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    ni, nt, oi, ot = (torch.nn.functional.normalize(torch.randn(3, 4), dim=-1) for _ in range(4))
    s.old = object()
    s.new_and_old = lambda ctx, batch: (ni, nt, oi, ot)
    got = s.loss_terms(SimpleNamespace(), None, None)["cclip_ckc_loss"]

    def unit(v):
        return [x / math.sqrt(sum(y * y for y in v)) for x in v]

    with torch.no_grad():
        h = [unit([*s.projector(ni[i]).tolist(), *s.projector(nt[i]).tolist()]) for i in range(3)]
    z = [unit([*oi[i].tolist(), *ot[i].tolist()]) for i in range(3)]
    sim = [[sum(a * b for a, b in zip(h[i], z[j], strict=True)) / 0.5 for j in range(3)] for i in range(3)]
    h2z = -sum(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(3))) for i in range(3)) / 3
    z2h = -sum(sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in range(3))) for i in range(3)) / 3
    assert float(got.detach()) == pytest.approx(2.0 * 0.5 * (h2z + z2h), rel=1e-5)
