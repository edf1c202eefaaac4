"""Plugins: the user's own modules, imported before a config is checked, so that the strategies, indexing
policies and dataset loaders they register (through `ccr.api`) are valid names everywhere.

`plugins: [my_strategies.py, mypackage.policies]` in a config or sweep file (or `--set plugins=[...]`): a
path ending in `.py` is a file (relative paths from the current folder), anything else a module name.
Every process that builds a config imports them: the CLI, each sweep trial, each Ray Train worker and shard
actor. On the Ray that ccr starts on this machine, those processes find each plugin where the first process
found it (CCR_PLUGINS, inherited); on a cluster, relative paths resolve in the job's working directory, which
`ray job submit --working-dir .` uploads to every node.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from ccr.errors import ConfigError

ENV = "CCR_PLUGINS"  # JSON {spec: absolute file or folder} of the plugins this process's parent imported
_LOADED: dict[str, ModuleType] = {}


def _known() -> dict[str, str]:
    try:
        known = json.loads(os.environ.get(ENV) or "{}")
    except json.JSONDecodeError:
        return {}
    return known if isinstance(known, dict) else {}


def _remember(spec: str, where: Path) -> None:
    """Let processes started from here (Ray's workers on this machine, whatever their folder) find `spec` where
    this process found it."""
    known = _known()
    known[spec] = str(where)
    os.environ[ENV] = json.dumps(known)


def _candidates(spec: str) -> list[Path]:
    """Where a plugin file may be: where the parent process found it, else from the current folder (on a
    cluster: the job's working directory)."""
    path = Path(spec).expanduser()
    if path.is_absolute():
        return [path]
    known = _known().get(spec)
    return [*([Path(known)] if known else []), Path.cwd() / path]


def import_plugin(spec: str) -> ModuleType:
    """Import one plugin (a `.py` file or a module name) once per process; any failure is one ConfigError
    naming it."""
    if spec in _LOADED:
        return _LOADED[spec]
    try:
        if spec.endswith(".py"):
            found = _candidates(spec)
            file = next((f for f in found if f.is_file()), None)
            if file is None:
                raise ConfigError(f"plugin {spec!r}: no such file (looked in "
                                  f"{', '.join(str(f.parent) for f in found)})")
            file = file.resolve()
            # the same module name in every process (str's hash is salted per process; this digest is not)
            name = f"ccr_plugin_{file.stem}_{hashlib.sha256(str(file).encode()).hexdigest()[:10]}"
            mod_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            try:
                mod_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            _remember(spec, file)
        else:
            top = spec.split(".")[0]
            known = _known().get(spec)
            for base in [*([Path(known)] if known else []), Path.cwd()]:
                if (base / top).is_dir() or (base / f"{top}.py").is_file():
                    if str(base) not in sys.path:
                        sys.path.append(str(base))
                    _remember(spec, base.resolve())
                    break
            module = importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (a user's module may raise anything at import)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"plugin {spec!r} failed to import: {type(e).__name__}"
                          + (f": {first[:300]}" if first else "")) from None
    _LOADED[spec] = module
    return module


def import_plugins(specs: object) -> None:
    """Every plugin of a config's `plugins` list, in order."""
    if specs is None:
        return
    if not isinstance(specs, list) or not all(isinstance(s, str) and s.strip() for s in specs):
        raise ConfigError(f"config key 'plugins': a list of module names or .py files, got {specs!r}"[:300])
    for s in specs:
        import_plugin(s.strip())
