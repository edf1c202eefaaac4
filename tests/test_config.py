import pytest

from ccr.config import ConfigError, parse_override
from ccr.configure import load_config


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
    from ccr.config import Config, from_dict, to_dict, validate
    from ccr.configure import build_config

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

    code = ("import sys\nfrom ccr.config import ConfigError\nfrom ccr.configure import load_config\n"
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
