"""The pretrained regime (tasks.pretrain, cached and reused) and the fixed-features regime (model.freeze)."""

from __future__ import annotations

import pytest
import torch

import ccr.study.pretraining
import ccr.study.runner
from ccr.data import DataError, load_dataset, resolve_task_order
from ccr.io.checkpoint import from_bytes
from ccr.study.configure import load_config
from ccr.study.runner import Study
from tests.conftest import TINY


def _cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.n_tasks=2",
                              "data.pretrain_pool=48", "train.threads=1", *extra])


def test_the_pool_holds_every_family_in_a_neutral_palette_and_is_not_in_the_sequence(tmp_path):
    cfg = _cfg(tmp_path, "tasks.pretrain=[pool]")
    ds = load_dataset(cfg)
    assert ds.task_names == ["round", "boxes", "pool"] and len(ds.image_ids("pool", "train")) == 48
    assert len(ds.image_ids("pool", "test")) == 0
    caps = " ".join(ds.captions[c] for c in ds.caption_ids("pool", "train"))
    assert any(w in caps for w in ("diamond", "rhombus", "pillar", "bar"))  # families the sequence never sees
    assert resolve_task_order(cfg, ds) == ["round", "boxes"]
    assert resolve_task_order(_cfg(tmp_path, "tasks.pretrain=[pool]", "tasks.order=random"), ds) != ["pool"]
    with pytest.raises(DataError, match=r"tasks.order and tasks.pretrain both name \['pool'\]"):
        resolve_task_order(_cfg(tmp_path, "tasks.pretrain=[pool]", "tasks.order=[pool,round]"), ds)
    with pytest.raises(DataError, match="tasks.pretrain names unknown task.*'pool' task with data.pretrain_pool"):
        resolve_task_order(_cfg(tmp_path, "tasks.pretrain=[lake]"), ds)
    # the pool is rendered after everything else: the sequence's items are those of the plain benchmark
    plain = load_dataset(load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.n_tasks=2"]))
    ids = plain.image_ids(["round", "boxes"], "test")
    assert torch.equal(plain.images.load(ids), ds.images.load(ids))


def test_pretraining_is_outside_the_sequence_and_trained_once_per_key(tmp_path, monkeypatch):
    calls = []
    real = ccr.study.runner.train_task

    def counting(model, ctx, *a, **k):
        calls.append(ctx.pretraining)
        return real(model, ctx, *a, **k)

    monkeypatch.setattr(ccr.study.runner, "train_task", counting)
    monkeypatch.setattr(ccr.study.pretraining, "train_task", counting)  # the pretraining stage trains there
    plain = Study(_cfg(tmp_path), tmp_path / "plain", progress=False, threads=1).run()
    a = Study(_cfg(tmp_path, "tasks.pretrain=[pool]"), tmp_path / "a", progress=False, threads=1)
    res = a.run()
    assert calls.count(True) == 1 and res["pretrain"]["from"] == "trained" and res["pretrain"]["tasks"] == ["pool"]
    assert res["task_order"] == ["round", "boxes"] and len(res["recall"]["t2i"]["1"]) == 2
    assert res["index_cost"]["images_embedded"] == plain["index_cost"]["images_embedded"]  # no pool items indexed
    assert res["recall"] != plain["recall"]  # the sequence started from the pretrained model
    # another study with the same data, model, training config and seed, another strategy: reused
    b = Study(_cfg(tmp_path, "tasks.pretrain=[pool]", "strategy.name=lwf"), tmp_path / "b", progress=False,
              threads=1).run()
    assert calls.count(True) == 1 and b["pretrain"]["from"] == "cache" and b["pretrain"]["key"] == \
        res["pretrain"]["key"]
    # another seed is another pretrained model
    Study(_cfg(tmp_path, "tasks.pretrain=[pool]", "seed=1"), tmp_path / "c", progress=False, threads=1).run()
    assert calls.count(True) == 2
    # a cache shared through storage (a sweep's): studies elsewhere read it from there
    shared = tmp_path / "shared"
    Study(_cfg(tmp_path, "tasks.pretrain=[pool]", f"tasks.pretrain_cache={shared}"), tmp_path / "d",
          progress=False, threads=1).run()
    assert calls.count(True) == 3 and len(list(shared.glob("*.pt"))) == 1


def test_frozen_backbone_trains_only_the_heads(tmp_path):
    cfg = _cfg(tmp_path, "tasks.pretrain=[pool]", "model.freeze=backbone")
    study = Study(cfg, tmp_path / "f", progress=False, threads=1)
    res = study.run()
    cached = from_bytes((tmp_path / "cache" / "pretrained" / f"{res['pretrain']['key']}.pt").read_bytes(), "x")
    after = study.model.state_dict()
    backbone = [k for k in after if k.startswith(("image_encoder.", "text_encoder."))]
    heads = [k for k in after if k.startswith(("image_proj.", "text_proj."))]
    assert backbone and heads
    assert all(torch.equal(after[k].cpu(), cached["model"][k]) for k in backbone)
    assert any(not torch.equal(after[k].cpu(), cached["model"][k]) for k in heads)
    # freezing is a property of the sequence, not of pretraining: the unfrozen study shares the cache
    unfrozen = Study(_cfg(tmp_path, "tasks.pretrain=[pool]"), tmp_path / "u", progress=False, threads=1)
    assert unfrozen.run()["pretrain"] == {**res["pretrain"], "from": "cache"}


def test_the_regimes_sweep_runs_the_values_chosen_on_val():
    """sweeps/regimes.yaml copies sweeps/tuned/chosen.yaml's values into its cases: they must agree, and a
    strategy's parameters reach its own studies only."""
    from pathlib import Path

    import yaml

    from analysis.findings_tables import REGIMES
    from ccr.distributed.sweep_spec import load_spec

    repo = Path(__file__).resolve().parent.parent
    chosen = yaml.safe_load((repo / "sweeps" / "tuned" / "chosen.yaml").read_text())
    seen = set()
    # pretrained_methods adds wiseft, zscl and lora; reindexing and approx run some strategies in some regimes
    for sweep in ("regimes.yaml", "pretrained_methods.yaml", "reindexing.yaml", "approx.yaml"):
        spec = load_spec(repo / "sweeps" / sweep)
        for cell in spec.cells():
            cfg = spec.config_for(cell)
            regime = REGIMES[tuple(cfg.tasks.pretrain), cfg.model.freeze]
            assert cfg.tags == {k: cell[k] for k in ("regime", "method") if k in cell}, (sweep, cfg.tags)
            name = "lora" if cfg.model.adapter.kind == "lora" else cfg.strategy.name
            want = {k: v for k, v in chosen[regime].get(name, {}).items() if not k.startswith("val/")}
            have = {"alpha": cfg.model.adapter.alpha} if name == "lora" else cfg.strategy.params.get(name, {})
            assert {k: have.get(k) for k in want} == want, (sweep, regime, name)
            assert set(cfg.strategy.params) <= {cfg.strategy.name}
            seen.add((regime, name))
    assert {(r, s) for r in chosen for s in chosen[r]} <= seen
