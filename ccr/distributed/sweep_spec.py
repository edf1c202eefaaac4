"""Sweep files: a base config, overrides, grid axes and an optional Optuna search, checked before Ray starts.

    base: null                 # a config YAML (relative to this file), or null for the embedded default
    set: {train.epochs: 10}    # overrides for every trial
    grid:                      # axes over any config keys; every combination is one trial (one study)
      strategy.name: [finetune, lwf]
      index.policy: [reindex, no_reindex]
      tasks.order: {random_permutations: 3}   # or explicit lists of task names
      seed: [0, 1, 2]
      regime:                  # a named axis (not a config key): each case sets several keys together
        scratch: {tasks.pretrain: [], strategy.params.ewc.lam: 150}
        pretrained: {tasks.pretrain: [pool], strategy.params.ewc.lam: 50}
                               # and tags.regime = the case's name, which results and analysis carry
    optuna:                    # optional: one Optuna search per grid cell
      space: {train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}
      metric: t2i/R@1              # a name from ccr.measure.results (t2i/R@1, forgetting/t2i/R@1, rsum, ...)
      mode: max
      num_samples: 8
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
    max_concurrent_trials: null   # default: no cap; trials queue for their resources (the autoscaler sees them)
    max_failures: 1               # retries of a failed trial; then it is recorded as failed
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccr.config.files import read_yaml, set_path
from ccr.config.schema import Config, ConfigError
from ccr.measure.results import QUANTITIES, metric, metric_names
from ccr.study.configure import build_config

SECTIONS = {f.name for f in dataclasses.fields(Config)}
SPEC_KEYS = {"base", "set", "grid", "optuna", "resources", "max_concurrent_trials", "max_failures", "name",
             "plugins"}
DISTRIBUTIONS = {"uniform", "loguniform", "int", "choice"}


@dataclass
class SweepSpec:
    name: str
    base_tree: dict[str, Any]
    grid: dict[str, list[Any]]
    optuna: dict[str, Any] | None = None
    # named axes: axis -> case name -> {dotted key: value}; the grid holds the case names
    cases: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    raw: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[dict[str, Any]]:
        """Every distinct study the grid axes make (one dict of dotted key -> value per trial or search): a
        strategy's parameters are left out of the cells that do not run that strategy, so that such a cell is
        neither named by them nor run once per value."""
        keys = list(self.grid)
        out: list[dict[str, Any]] = []
        for vals in itertools.product(*(self.grid[k] for k in keys)):
            cell = self._used(dict(zip(keys, vals, strict=True)))
            if cell not in out:
                out.append(cell)
        return out

    def launch_order(self) -> list[dict[str, Any]]:
        """The cells, the most training work first (epochs x the strategy's work over the tasks; ties in grid
        order). Tune starts trials in the order it is given them, one per free slot: started in grid order, the
        two longest studies of the default sweep shared a slot while the other sat idle at the end. Longest
        first (the LPT rule) bounds that idle tail by the shortest studies."""
        from ccr.strategies import strategy_work

        def work(cell: dict[str, Any]) -> float:
            cfg = self.config_for(cell)
            tasks = len(cfg.tasks.order) if isinstance(cfg.tasks.order, list) else cfg.data.n_tasks
            return cfg.train.epochs * strategy_work(cfg.strategy, tasks)

        return sorted(self.cells(), key=work, reverse=True)  # a stable sort: reversed, equal keys keep their order

    def _used(self, cell: dict[str, Any]) -> dict[str, Any]:
        names = (apply_params(self.base_tree, cell, self.cases).get("strategy") or {}).get("name", "finetune")
        names = [names] if isinstance(names, str) else list(names or [])
        return {k: v for k, v in cell.items()
                if not (k.startswith("strategy.params.") and k.split(".")[2] not in names)}

    def config_for(self, params: dict[str, Any]) -> Config:
        return build_config(apply_params(self.base_tree, params, self.cases))


def apply_params(base_tree: dict[str, Any], params: dict[str, Any],
                 cases: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A trial's config tree: the base with its parameters set; a named axis's case sets each of its keys
    and tags.<axis> = the case's name. The one place that turns parameters into a config, so the checks
    at load time and the trial itself build the same one."""
    tree = copy.deepcopy(base_tree)
    for k, v in params.items():
        if k in cases:
            for ck, cv in cases[k][v].items():
                set_path(tree, ck, copy.deepcopy(cv))
            set_path(tree, f"tags.{k}", str(v))
        else:
            set_path(tree, k, v)
    return tree


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's parameters: a grid trial's cell (Tune's config {"cell": {...}}), or a search's config."""
    return dict(config["cell"]) if set(config) == {"cell"} and isinstance(config["cell"], dict) else dict(config)


def trial_name(params: dict[str, Any]) -> str:
    """A stable, readable name from a trial's parameters (so a restored sweep finds its runs)."""
    parts = []
    for k in sorted(params):
        v = params[k]
        v = "+".join(map(str, v)) if isinstance(v, list) else (f"{v:.6g}" if isinstance(v, float) else str(v))
        parts.append(f"{k.replace('strategy.params.', '')}={v}")
    readable = ",".join(parts)
    name = readable.replace("/", "_").replace(" ", "")
    # hashlib, not hash(): str hashes change with every interpreter (PYTHONHASHSEED), and a resumed
    # sweep, or a trial retried on another node, must find the same folder
    exact = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    digest = hashlib.sha256(exact.encode()).hexdigest()[:12]
    lossy = name != readable or any(isinstance(v, float) and float(f"{v:.6g}") != v for v in params.values())
    if lossy:  # two trials could share the readable name (a/b and a_b; values equal to 6 digits): not the folder
        return (name if len(name) < 160 else name[:150]) + "-" + digest
    return name if len(name) < 180 else name[:150] + "-" + digest


def _field_type(key: str) -> Any:
    """The annotated type of a dotted config key (None when the key is free-form, e.g. strategy params)."""
    tp: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if isinstance(tp, type) else {}
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def valid_metrics(cfg: Config) -> set[str]:
    """The metric names a trial of this config reports (`ccr.measure.results` defines them)."""
    return set(metric_names(cfg.eval.ks, cfg.index.compare, val=cfg.eval.val, transfer=cfg.eval.transfer,
                            control=bool(cfg.eval.control),
                            classification=[c.name for c in cfg.eval.classification]))


def _old_metric_name(name: str) -> str | None:
    """The current name of a metric spelled as ccr 0.1 did (summary.avg_final_recall.t2i.1), if it is one."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "summary" and parts[1] in QUANTITIES:
        return metric(parts[1], parts[2], parts[3])
    return {"rsum.avg_final": "rsum", "index_cost.total": "index_cost/embedded",
            "index_cost.images_embedded": "index_cost/images",
            "index_cost.captions_embedded": "index_cost/captions"}.get(name)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read and check a sweep file: every trial's config is built (and so validated) here."""
    from ccr.config.files import parse_override

    path = Path(path)
    raw = read_yaml(path)
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"sweep {path}: unknown key(s) {sorted(unknown)} (valid: {', '.join(sorted(SPEC_KEYS))})")
    base = raw.get("base")
    tree: dict[str, Any] = read_yaml(path.parent / base) if base else {}
    if "plugins" in raw:  # the user's modules, as the config key of every trial (ccr.config.plugins)
        set_path(tree, "plugins", raw["plugins"])
    for k, v in (raw.get("set") or {}).items():
        set_path(tree, k, v)
    for item in overrides or []:
        k, v = parse_override(item)
        set_path(tree, k, v)
    base_cfg = build_config(copy.deepcopy(tree))
    grid: dict[str, list[Any]] = {}
    cases: dict[str, dict[str, dict[str, Any]]] = {}
    for key, values in (raw.get("grid") or {}).items():
        if isinstance(values, dict) and set(values) == {"random_permutations"} and key == "tasks.order":
            grid[key] = _permutations(base_cfg, int(values["random_permutations"]))
        elif isinstance(values, dict):
            cases[key] = _cases(path, key, values)
            grid[key] = list(cases[key])
        elif not isinstance(values, list):
            raise ConfigError(f"sweep {path}: grid axis '{key}' must be a list of values, or named cases "
                              f"({{case: {{key: value, ...}}, ...}})")
        else:
            grid[key] = values
        if not grid[key]:
            raise ConfigError(f"sweep {path}: grid axis '{key}' is empty")
    _check_cases(path, grid, cases)
    opt = raw.get("optuna")
    if not grid and not opt:
        raise ConfigError(f"sweep {path}: the grid is empty and there is no optuna search: nothing to run")
    res = raw.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpus_per_trial", "gpus_per_trial"}:
        raise ConfigError(f"sweep {path}: resources takes cpus_per_trial and gpus_per_trial, got {res!r}")
    spec = SweepSpec(name=raw.get("name") or path.stem, base_tree=tree, grid=grid, optuna=opt, cases=cases,
                     cpus_per_trial=_number(path, "resources.cpus_per_trial", res.get("cpus_per_trial", 1), 0),
                     gpus_per_trial=_number(path, "resources.gpus_per_trial", res.get("gpus_per_trial", 0), 0),
                     max_concurrent_trials=_optional_int(path, "max_concurrent_trials",
                                                         raw.get("max_concurrent_trials")),
                     max_failures=int(_number(path, "max_failures", raw.get("max_failures", 1), -1)), raw=raw)
    if spec.cpus_per_trial + spec.gpus_per_trial <= 0:
        raise ConfigError(f"sweep {path}: a trial must request some CPU or GPU (resources)")
    for cell in spec.cells() or [{}]:  # unknown keys, wrong types and bad values in any axis fail here
        try:
            spec.config_for(cell)
        except ConfigError as e:
            raise ConfigError(f"sweep {path}, grid cell {cell}: {e}") from e
    if opt:
        _check_optuna(path, spec, base_cfg)
    return spec


def _cases(path: Path, axis: str, values: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """A named axis's cases, checked for shape (their keys and values are checked with every cell)."""
    if _field_type(axis) is not None or axis in SECTIONS:
        raise ConfigError(f"sweep {path}: grid axis '{axis}' is a config key, so it takes a list of values; "
                          f"named cases go under an axis name that is not a config key (e.g. 'regime')")
    if "." in axis or not axis:
        raise ConfigError(f"sweep {path}: named axis '{axis}' must be a plain name (it becomes tags.{axis})")
    out = {}
    for name, keys in values.items():
        if isinstance(name, bool) or name is None:  # YAML read yes/no/on/off/true/false or ~/null as a value
            raise ConfigError(f"sweep {path}: grid axis '{axis}' has a case named {name!r}, which YAML reads from "
                              "yes/no/on/off/true/false or ~/null: quote the case name (e.g. 'yes')")
        if not isinstance(keys, dict) or not keys:
            raise ConfigError(f"sweep {path}: case '{name}' of grid axis '{axis}' must map config keys to "
                              f"values, got {keys!r}")
        out[str(name)] = {str(k): v for k, v in keys.items()}
    return out


def _check_cases(path: Path, grid: dict[str, list[Any]], cases: dict[str, dict[str, dict[str, Any]]]) -> None:
    """A key is set by one axis only: two axes (or an axis and a case) setting it would depend on order."""
    owner: dict[str, str] = {k: f"grid axis '{k}'" for k in grid if k not in cases}
    for axis, by_name in cases.items():
        for key in sorted({k for keys in by_name.values() for k in keys}):
            if key == "tags" or key.startswith("tags."):
                raise ConfigError(f"sweep {path}: grid axis '{axis}' sets '{key}'; a named axis sets tags.{axis} "
                                  f"itself")
            if key in owner:
                raise ConfigError(f"sweep {path}: '{key}' is set by both {owner[key]} and the cases of grid "
                                  f"axis '{axis}'")
            owner[key] = f"the cases of grid axis '{axis}'"


def _number(path: Path, key: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"sweep {path}: {key} must be a number >= {minimum}, got {value!r}")
    return float(value)


def _optional_int(path: Path, key: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"sweep {path}: {key} must be a positive int or null, got {value!r}")
    return value


def _permutations(cfg: Config, n: int) -> list[list[str]]:
    from ccr.data import load_dataset, sequence_tasks
    from ccr.models import pixels_for

    tasks = sequence_tasks(cfg, load_dataset(cfg, pixels_for(cfg)))
    rng = np.random.default_rng(cfg.seed)
    return [[tasks[i] for i in rng.permutation(len(tasks))] for _ in range(n)]


def _check_optuna(path: Path, spec: SweepSpec, cfg: Config) -> None:
    opt = spec.optuna
    missing = {"space", "metric", "mode"} - set(opt)
    if missing:
        raise ConfigError(f"sweep {path}: optuna needs {sorted(missing)}")
    if opt["mode"] not in ("min", "max"):
        raise ConfigError(f"sweep {path}: optuna.mode must be min or max, got {opt['mode']!r}")
    if opt["metric"] not in valid_metrics(cfg):
        new = _old_metric_name(opt["metric"])
        if new in valid_metrics(cfg):
            raise ConfigError(f"sweep {path}: optuna.metric {opt['metric']!r} is now called {new!r}")
        raise ConfigError(f"sweep {path}: optuna.metric {opt['metric']!r} is not in the results; valid: "
                          f"{', '.join(sorted(valid_metrics(cfg)))}")
    name = opt["metric"].split("/", 1)[1] if opt["metric"].split("/")[0] in cfg.index.compare else opt["metric"]
    if not name.startswith(("val/", "index_cost/")):  # the cost is counted, not measured on test items
        on_val = opt["metric"].replace(name, "val/" + name)
        if on_val not in valid_metrics(cfg):  # zero_shot/, transfer/, control/: measured on test items only
            on_val = "val/" + "/".join(name.split("/")[-2:])
        raise ConfigError(f"sweep {path}: optuna.metric {opt['metric']!r} is measured on test items; choosing "
                          f"hyperparameters on them reports an optimistic test number. Select on the val split: "
                          f"{on_val!r}")
    if cfg.data.kind == "generated" and cfg.data.val_per_task < cfg.eval.min_test_items:
        raise ConfigError(f"sweep {path}: optuna.metric {opt['metric']!r} needs val items: set data.val_per_task "
                          f"(at least eval.min_test_items={cfg.eval.min_test_items}) for the generated benchmark")
    for key, dist in opt["space"].items():
        if not isinstance(dist, dict) or dist.get("type") not in DISTRIBUTIONS:
            raise ConfigError(f"sweep {path}: optuna.space.{key} needs a type in {sorted(DISTRIBUTIONS)}")
        tp = _field_type(key)
        numeric = tp in (int, float) or (tp is None and key.startswith("strategy.params."))
        if dist["type"] != "choice" and not numeric:
            raise ConfigError(f"sweep {path}: optuna.space.{key}: a {dist['type']} search needs a numeric key, "
                              f"but '{key}' is {getattr(tp, '__name__', tp)}")
        if dist["type"] != "choice":
            probe = spec.config_for({key: dist["low"]})
            del probe
        if key in spec.grid:
            raise ConfigError(f"sweep {path}: '{key}' is both a grid axis and an optuna parameter")
        for axis, by_name in spec.cases.items():
            if any(key in keys for keys in by_name.values()):
                raise ConfigError(f"sweep {path}: '{key}' is both set by the cases of grid axis '{axis}' and an "
                                  f"optuna parameter")


__all__ = ["SweepSpec", "apply_params", "load_spec", "trial_name", "valid_metrics"]
