"""What users add and how they drive ccr from Python: the public extension API (`ccr.api`), plugins from the
user's own files (in a study, and imported by every trial of a sweep), and `ccr.run` / `ccr.load_results` /
`ccr.analyze` for notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ccr.cli import main
from tests.cli import REPO, _sets

API = ["ArrayImages", "Batch", "ConfigError", "DataError", "Gallery", "IndexPolicy", "IndexState", "MODALITIES",
       "NoParams", "RetrievalDataset", "STRATEGY_HOOKS", "StepInput", "Strategy", "TaskContext", "register_loader",
       "register_policy", "register_strategy", "task_seed"]
EXAMPLE = REPO / "examples" / "l2_anchor.py"  # the README's example strategy, tested as it stands

PLUGIN = '''
import os
from pathlib import Path

from ccr.api import MODALITIES, IndexPolicy, register_loader, register_policy

marks = Path(__file__).with_name("marks")  # every process that imports this plugin leaves its pid here
marks.mkdir(exist_ok=True)
(marks / str(os.getpid())).write_text("imported")


@register_policy
class ReindexFirstTask(IndexPolicy):
    """Re-embed only the first task's entries (a policy from a user's file)."""

    name = "reindex_first_task"

    def update_old(self, state, inp, counts):
        for m in MODALITIES:
            if inp.step > 0:
                first = inp.order[0]
                self.embed_entries(state, inp, m, first, state.galleries[m].ids(first), counts)


@register_loader("generated_copy")
def load(cfg):
    """A dataset loader from a user's file: here, the generated benchmark under another kind."""
    from dataclasses import replace

    from ccr.data.generated import load_generated

    return load_generated(replace(cfg.data, kind="generated"))
'''


def test_the_public_api_keeps_its_names():
    """A name that disappears from ccr.api breaks users' plugins: this list changes only on purpose."""
    import ccr.api
    from ccr.index import policies
    from ccr.strategies import base, context

    assert sorted(ccr.api.__all__) == sorted(API)
    assert all(hasattr(ccr.api, n) for n in API)
    assert ccr.api.Strategy is base.Strategy and ccr.api.register_strategy is base.register
    assert ccr.api.IndexPolicy is policies.IndexPolicy and ccr.api.TaskContext is context.TaskContext
    assert set(ccr.api.STRATEGY_HOOKS) <= set(dir(ccr.api.Strategy))
    import ccr

    assert dir(ccr) == ["__version__", "analyze", "load_results", "run"]  # not typing's Any, TYPE_CHECKING, ...


def plugin_file(tmp_path, name="myplugin.py"):
    folder = tmp_path / "elsewhere"  # outside the project
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(PLUGIN)
    return folder / name


@pytest.fixture(autouse=True)
def _plugins_env(monkeypatch):
    """Importing a plugin records where it was found for child processes (CCR_PLUGINS) and adds to ccr's
    registries: all restored after each test, so no later test sees a test plugin's names."""
    from ccr.config import plugins
    from ccr.data import registry
    from ccr.index import policies
    from ccr.strategies import base

    monkeypatch.setenv("CCR_PLUGINS", "{}")
    monkeypatch.setenv("CCR_PLUGINS_SHOWN", "")
    for holder, name in ((base, "REGISTRY"), (policies, "POLICIES"), (registry, "LOADERS"), (plugins, "_LOADED"),
                         (plugins, "IMPORTED"), (plugins, "OVERRIDES")):
        monkeypatch.setattr(holder, name, type(getattr(holder, name))(getattr(holder, name)))


def test_a_plugin_strategy_policy_and_loader_run_in_a_study(tiny_overrides, tmp_path, capsys):
    plug = plugin_file(tmp_path)
    sets = [*tiny_overrides, f"plugins=[{EXAMPLE},{plug}]", "data.n_tasks=2", "train.epochs=2"]
    # its names are valid everywhere a config is checked, and listed among the valid choices
    assert main(["run", "--quiet", "--out", str(tmp_path / "x"), *_sets([*sets, "strategy.name=nope"])]) == 2
    assert "l2_anchor" in capsys.readouterr().err
    out = tmp_path / "o"
    assert main(["run", "--quiet", "--out", str(out), *_sets([*sets, "strategy.name=l2_anchor",
                                                              "index.compare=[reindex_first_task]",
                                                              "data.kind=generated_copy"])]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["strategy"] == "l2_anchor" and res["config"]["plugins"] == [str(EXAMPLE), str(plug)]
    assert res["config"]["strategy"]["params"] == {"l2_anchor": {"weight": 0.01}}
    first = res["by_policy"]["reindex_first_task"]["index_cost"]["per_step"]
    assert first[1]["images"] == 2 * first[0]["images"]  # the new task's images and the first task's again
    assert any("anchor_loss" in k for s in res["train"] for k in s)  # the strategy's term was trained


@pytest.mark.parametrize("content, spec, needle", [
    (None, "missing.py", "plugin 'missing.py': no such file"),
    ("1 / 0\n", "bad.py", "plugin 'bad.py' failed to import: ZeroDivisionError: division by zero"),
    (None, "no_such_module_here", "plugin 'no_such_module_here' failed to import: ModuleNotFoundError"),
    ("from ccr.api import Strategy, register_strategy\n@register_strategy\nclass X(Strategy):\n    pass\n",
     "noname.py", "plugin 'noname.py' failed to import: TypeError: X: a strategy needs a `name` that is a non-empty "
     "string, not ''"),
    ("from ccr.api import Strategy, register_strategy\n@register_strategy\nclass X(Strategy):\n    name = 3\n",
     "intname.py", "X: a strategy needs a `name` that is a non-empty string, not 3"),
    ("from ccr.api import Strategy, register_strategy\n@register_strategy\nclass F(Strategy):\n"
     "    name = 'finetune'\n", "shadow.py", "F: 'finetune' is ccr's own strategy (strategy.name); choose another "
     "name, or set `replaces_builtin = True`"),
    ("from ccr.api import IndexPolicy, register_policy\n@register_policy\nclass R(IndexPolicy):\n"
     "    name = 'reindex'\n", "shadowp.py", "R: 'reindex' is ccr's own indexing policy (index.policy)"),
    ("import sys\nsys.exit(0)\n", "exits.py", "plugin 'exits.py' called sys.exit(0) while being imported"),
    ("raise KeyboardInterrupt\n", "ki.py", "plugin 'ki.py' was interrupted while being imported"),
])
def test_a_plugin_that_fails_to_import_is_one_line(content, spec, needle, tiny_overrides, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    if content:
        (tmp_path / spec).write_text(content)
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *_sets([*tiny_overrides, f"plugins=[{spec}]"])]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    # a later config error still names the valid strategies (a bad registration left nothing behind)
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *_sets([*tiny_overrides, "strategy.name=nope"])]) == 2
    assert "unknown strategy 'nope' (valid: " in capsys.readouterr().err


def test_a_plugin_replaces_a_builtin_only_when_it_says_so_and_results_record_it(tiny_overrides, tmp_path, capsys):
    plug = tmp_path / "mine.py"
    plug.write_text("from ccr.api import Strategy, register_strategy\n@register_strategy\nclass MyFinetune(Strategy):"
                    "\n    name = 'finetune'\n    replaces_builtin = True\n")
    out = tmp_path / "o"
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, f"plugins=[{plug}]",
                                                              "data.n_tasks=2", "train.epochs=1"])]) == 0
    err = capsys.readouterr().err
    # plugins, like any import, run code: each is named with where it was read from
    assert f"ccr: plugin '{plug}' imported from {plug.resolve()}" in err
    assert f"plugin '{plug}' imported from {plug.resolve()}" in (out / "log.txt").read_text()
    prov = json.loads((out / "results.json").read_text())["provenance"]["plugins"]
    assert list(prov["overrides"]) == ["strategy finetune"]
    assert prov["overrides"]["strategy finetune"].endswith(".MyFinetune")
    found = prov["imported"][str(plug)]
    assert found["path"] == str(plug.resolve()) and len(found["sha256"]) == 64


@pytest.mark.slow
def test_a_sweep_of_a_plugin_strategy_imports_it_in_every_trial(tmp_path):
    """The user's sweep file names a plugin by a path relative to their folder (outside the project); ccr starts
    its own Ray; each trial (a Ray worker process) imports the plugin and trains its strategy."""
    plug = plugin_file(tmp_path)
    folder = plug.parent
    (folder / "sweep.yaml").write_text(textwrap.dedent(f"""\
        name: plug
        plugins: [{EXAMPLE}, {plug.name}]
        set: {{train.threads: 1}}
        grid: {{strategy.name: [l2_anchor], seed: [0, 1]}}
        resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
        """))
    from tests.test_sweep import tiny_sets

    sets = [x for o in [*tiny_sets(tmp_path), "data.n_tasks=2", "train.epochs=2"] for x in ("--set", o)]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "ccr.cli", "sweep", "sweep.yaml", "--out", str(tmp_path / "out"),
                          "--quiet", *sets], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*/results.json")]
    assert len(results) == 2 and {r["strategy"] for r in results} == {"l2_anchor"}
    pids = {int(p.name) for p in (folder / "marks").iterdir()}
    assert len(pids) >= 3, (pids, run.stderr[-2000:])  # the sweep's driver and the two trials' processes


def test_the_python_api_runs_loads_and_analyses(tiny_overrides, tmp_path):
    import ccr

    out = tmp_path / "runs" / "a"
    res = ccr.run(None, overrides=[*tiny_overrides, "data.n_tasks=2", "train.epochs=1"], out=out)
    assert res == json.loads((out / "results.json").read_text())
    again = ccr.run({"seed": 0, "eval": {"ks": [1, 5, 10]}}, overrides=[*tiny_overrides, "data.n_tasks=2",
                                                                     "train.epochs=1"], out=out)
    assert again["metrics"] == res["metrics"] and again["tasks_done"] == 2  # the same study: nothing trains again
    loaded = ccr.load_results(tmp_path / "runs")
    assert set(loaded.results) == {"a"} and not loaded.skipped
    assert {"run", "policy", "step", "task", "direction", "k", "metric", "value"} <= set(loaded.tidy.columns)
    row = loaded.per_run[(loaded.per_run.direction == "t2i") & (loaded.per_run.k == 1)].iloc[0]
    assert row.avg_final_recall == pytest.approx(res["metrics"]["t2i/R@1"])
    where = ccr.analyze(tmp_path / "runs", gallery_size=10**6, price=2.0)
    assert (where / "report.html").is_file() and (where / "cost_at_scale.csv").is_file()


@pytest.mark.slow
def test_a_run_on_its_own_ray_prints_only_ccr_lines_and_every_process_imports_the_plugin(tiny_overrides, tmp_path):
    """`ccr run` with 2 Ray Train workers and the 2 shard actors rank 0 starts (half a CPU each on this machine), on
    a Ray it starts itself. What a user sees (output to a file, as in CI or `| tee`): one line per event from rank
    0, no terminal colour codes, none of Ray's notices, reports or resource lines, and no warning from a Ray
    worker or a shard actor. Every process that builds the study's config imports its plugin, whose strategy it
    trains."""
    import shutil
    import tempfile
    from pathlib import Path

    plug = plugin_file(tmp_path)
    processes = 5  # the driver, 2 Ray Train workers and 2 shard actors
    sets = [*tiny_overrides, f"plugins=[{EXAMPLE},{plug}]", "strategy.name=l2_anchor", "data.n_tasks=2",
            "train.epochs=1", "resources.workers=2", "resources.cpus_per_worker=0.5", "resources.shards=2",
            "resources.shard_cpus=0.5"]
    # a cluster that `ray start` recorded on this machine and that is gone: Ray's ray.init() would try to
    # join it (and hang); ccr starts a Ray of its own unless RAY_ADDRESS names one
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    Path(ray_tmp, "ray").mkdir()
    Path(ray_tmp, "ray", "ray_current_cluster").write_text("127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_COLOR_PREFIX")}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO))
    try:
        run = subprocess.run([sys.executable, "-m", "ccr.cli", "run", "--out", str(tmp_path / "o"), *_sets(sets)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "\x1b[" not in out
    for noise in ("Token authentication", "Started a local Ray", "Reporting training result", "PreemptionWatcher",
                  "Requesting resources", "Warning", "warn(", "PlacementGroupCleaner", "Failed to query"):
        assert noise not in out, (noise, out[-3000:])
    assert sum("task boxes: " in ln and " steps, mean loss" in ln for ln in out.splitlines()) == 1, out[-3000:]
    assert "after task 2/2 (boxes) [reindex]" in out and "t2i R@1" in out
    # each plugin named once, by the driver: not again by each worker (whose lines Ray forwarded, deduplicated with
    # its own colour codes)
    assert sum("imported from" in ln for ln in out.splitlines()) == 2, out[-3000:]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["status"] == "complete" and res["strategy"] == "l2_anchor"
    assert res["config"]["resources"]["workers"] == 2 and res["config"]["resources"]["shards"] == 2
    pids = {int(p.name) for p in (plug.parent / "marks").iterdir()}
    assert len(pids) >= processes, pids
