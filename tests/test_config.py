
import pytest

from ccr.cli import main
from ccr.config.files import parse_override
from ccr.config.schema import ConfigError
from ccr.study.configure import load_config


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg.data.kind == "generated" and cfg.index.policy == "reindex" and cfg.strategy.name == "finetune"


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["index.policy=no_reindex", "tasks.order=[boxes,round]", "train.lr=3e-4",
                             "train.epochs=2", "seed=7"])
    assert cfg.index.policy == "no_reindex" and cfg.tasks.order == ["boxes", "round"]
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.epochs == 2 and cfg.seed == 7


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.epochs=two", "config key 'train.epochs': expected int"),
    ("train.lr=true", "config key 'train.lr': expected float"),
    ("model.image.layers=1.5", "config key 'model.image.layers': expected int"),
    ("index.policy=sometimes", "unknown indexing policy 'sometimes'"),
    ("strategy.name=magic", "unknown strategy 'magic'"),
    ("eval.scope=everything", "config key 'eval.scope'"),
    ("tasks.order=shuffle", "config key 'tasks.order'"),
    ("train.batch_size=0", "config key 'train.batch_size': must be >= 1"),
    ("data.kind=karpathy", "config key 'data.path'"),
    ("train", "KEY=VALUE"),
    ("eval.backfill_curve=[0, 0.5, 0.5, 1]", "config key 'eval.backfill_curve': [0.5] named twice"),
    ("eval.backfill_orders=[random, random]", "config key 'eval.backfill_orders': ['random'] named twice"),
    (f"eval.backfill_curve=[{', '.join(str(i / 2000) for i in range(2000))}]",
     "config key 'eval.backfill_curve': at most 101 fractions"),
])
def test_config_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_strategy_error_lists_valid_choices():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["strategy.name=ewcc"])
    assert "finetune" in str(e.value) and "joint" in str(e.value)


def test_yaml_file_unknown_nested_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  image:\n    patch: 4\n")
    with pytest.raises(ConfigError, match="model.image.patch"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override_keeps_strings():
    assert parse_override("tasks.order=random") == ("tasks.order", "random")
    assert parse_override("data.path=/a/b=c.json") == ("data.path", "/a/b=c.json")


def test_validation_does_not_change_the_config_and_defaults_are_filled_in_a_copy():
    from ccr.config.schema import Config, from_dict, to_dict, validate
    from ccr.study.configure import build_config

    tree = {"strategy": {"name": ["replay", "ewc"], "params": {"ewc": {"lam": 5}}}}
    cfg = from_dict(Config, tree)
    before = to_dict(cfg)
    validate(cfg)
    assert to_dict(cfg) == before and cfg.strategy.params == {"ewc": {"lam": 5}}
    full = build_config(tree)
    assert full.strategy.params["ewc"]["lam"] == 5 and full.strategy.params["replay"]["budget"] == 200
    assert tree == {"strategy": {"name": ["replay", "ewc"], "params": {"ewc": {"lam": 5}}}}  # input untouched


def test_a_typo_fails_before_torch_is_imported():
    """Key and type errors come from the config alone: no strategy (so no torch) is imported for them."""
    import subprocess
    import sys

    code = ("import sys\nfrom ccr.config.schema import ConfigError\nfrom ccr.study.configure import load_config\n"
            "try:\n    load_config(None, ['train.lrr=1'])\nexcept ConfigError as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "unknown config key 'train.lrr'" in out and out.strip().endswith("False")


def test_cli_start_up_imports_no_torch():
    """`ccr --help` and a bad key answer at once: the CLI module imports only error classes (measured:
    `time ccr --help` 0.14 s here, 1.7 s when torch came with it)."""
    import subprocess
    import sys

    code = "import sys, ccr.cli; print(sorted(m for m in ('torch', 'numpy', 'ray', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_out = subprocess.run([sys.executable, "-m", "ccr.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in help_out.stdout and "sweep" in help_out.stdout and "analyze" in help_out.stdout


def test_renamed_keys_are_read_under_their_new_names_with_one_line(caplog):
    """Ray's resources moved to one `resources` section; the old keys keep working, each with one line."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ccr"):
        cfg = load_config(None, ["train.workers=2", "index.shards=2", "train.max_failures=3"])
    assert (cfg.resources.workers, cfg.resources.shards, cfg.resources.max_failures) == (2, 2, 3)
    said = [r.getMessage() for r in caplog.records]
    assert "config key 'train.workers' is now 'resources.workers'; read as that" in said
    assert "config key 'index.shards' is now 'resources.shards'; read as that" in said
    assert load_config(None, ["train.workers=2", "resources.workers=2"]).resources.workers == 2  # agree: fine
    with pytest.raises(ConfigError, match="'train.workers' .* and 'resources.workers' .* name the same setting"):
        load_config(None, ["train.workers=2", "resources.workers=1"])


def test_a_config_written_with_the_old_names_is_the_same_study():
    """config.yaml and checkpoints of earlier releases hold train.workers / index.shards: resume compares them
    under today's names, so an unchanged study is not refused."""
    import copy

    from ccr.config.schema import to_dict
    from ccr.study.resume import config_differences

    new = to_dict(load_config())
    old = copy.deepcopy(new)
    res = old.pop("resources")
    old["train"].update({k: res[k] for k in ("workers", "use_ray", "use_gpu", "cpus_per_worker", "max_failures")})
    old["index"].update({"shards": res["shards"], "shard_cpus": res["shard_cpus"], "shard_gpus": res["shard_gpus"]})
    assert config_differences(old, new) == []
    old["index"]["shards"] = 2
    assert config_differences(old, new) == ["resources.shards"]


def test_rules_are_declared_at_the_fields():
    """Choices, bounds and whether a key changes results come from each field's declaration, and so do the
    messages; what never changes a number is derived, not listed apart."""
    from ccr.config.schema import non_result_keys

    assert set(non_result_keys()) == {"data.shared_cache", "tasks.pretrain_cache", "eval.batch_size",
                                      "resources.max_failures", "checkpoint.keep", "tracking", "tags"}
    for override, needle in [("index.backfill_order=sideways", "config key 'index.backfill_order': 'sideways' is "
                              "not one of oldest, random, drift, ambiguity"),
                             ("model.text.max_length=2", "config key 'model.text.max_length': must be >= 3 ([CLS], a "
                              "word, [SEP]), got 2"),
                             ("train.lr=0", "config key 'train.lr': must be > 0, got 0"),
                             ("checkpoint.keep=0", "must be >= 1 (resume needs the last one)"),
                             ("eval.backfill_orders=[oldest,sideways]", "config key 'eval.backfill_orders': unknown "
                              "value 'sideways'"),
                             ("data.image_cache=sometimes", "config key 'data.image_cache': 'sometimes' is not one "
                              "of false, true, node, shared"),
                             ("model.image.heads=3", "the hidden size must be a multiple of the number of heads")]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert needle in str(e.value), (override, str(e.value))


def test_the_image_size_is_set_in_one_place(tmp_path):
    """model.image.image_size alone sizes the generated images too (data.image_size follows unless given)."""
    from ccr.data import load_dataset

    cfg = load_config(None, ["model.image.image_size=16", "data.n_tasks=2", "data.train_per_task=4",
                             "data.test_per_task=2", f"data.cache_dir={tmp_path}"])
    assert cfg.data.image_size == 16
    assert load_dataset(cfg).images.load([0]).shape[-1] == 16
    assert load_config().data.image_size == 32  # the default study: as before


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.1\nseed: 1\ntrain:\n  epochs: 2\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert f"config file {cfg}: line 4: key 'train' is given twice" in capsys.readouterr().err


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path, capsys):
    """9 levels of 8 aliases: 8^9 = 134 million leaves if expanded; the message shows a bounded excerpt."""
    levels = ["&a [x, x, x, x, x, x, x, x]"] + [f"&{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    (tmp_path / "c.yaml").write_text(f"seed: [{', '.join(levels)}]\n")
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err) < 400 and "config key 'seed': expected int, got list" in err, err[:600]


def test_checking_a_config_imports_no_torch():
    """A config (and every sweep cell) is checked before torch is imported: a refused config answers at once,
    and a sweep's driver, which never trains, does not spend a second of its start-up importing it."""
    import subprocess
    import sys

    from tests.cli import REPO

    code = ("import sys\nfrom ccr.study.configure import load_config\n"
            "load_config(None, ['strategy.name=[replay,ewc,lwf,zscl,agem,wiseft,compat,cclip]', "
            "'strategy.params.zscl.reference=[pool]', 'model.adapter.kind=lora', "
            "'index.compare=[no_reindex,backfill,drift_map]'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout[-500:] + out.stderr[-2000:]
