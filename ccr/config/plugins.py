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
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ccr.errors import ConfigError, first_line

log = logging.getLogger(__name__)
ENV = "CCR_PLUGINS"  # JSON {spec: absolute file or folder} of the plugins this process's parent imported
_LOADED: dict[str, ModuleType] = {}
IMPORTED: dict[str, dict[str, str]] = {}  # spec -> where it was found (and a .py file's sha256): results record it
OVERRIDES: dict[str, str] = {}  # "strategy finetune" -> the plugin class that replaced ccr's own


def claim_name(kind: str, name: object, cls: type, taken: dict[str, type], key: str) -> None:
    """Refuse (TypeError, which a plugin's import turns into one line) a name that is no string, or that is one
    of ccr's own unless the class says `replaces_builtin = True`; such a replacement is recorded in results,
    so results are never labelled with a built-in's name for another's behaviour."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{cls.__name__}: a {kind} needs a `name` that is a non-empty string, not {name!r}")
    old = taken.get(name)
    if old is not None and old is not cls and old.__module__.startswith("ccr."):
        if not getattr(cls, "replaces_builtin", False):
            raise TypeError(f"{cls.__name__}: {name!r} is ccr's own {kind} ({key}); choose another name, or set "
                            "`replaces_builtin = True` on the class to replace it (results then record that)")
        OVERRIDES[f"{kind} {name}"] = f"{cls.__module__}.{cls.__qualname__}"
        log.warning("%s %r: ccr's own is replaced by %s.%s (replaces_builtin)", kind, name, cls.__module__,
                    cls.__qualname__)


def record() -> dict[str, Any]:
    """The plugins this process imported (where from) and the built-ins they replaced, for results."""
    return {"imported": dict(IMPORTED), "overrides": dict(OVERRIDES)}


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
            found_at = {"path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
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
            found_at = {"path": str(getattr(module, "__file__", None) or spec)}
    except ConfigError:
        raise
    except SystemExit as e:  # sys.exit() at import would end ccr as if it had succeeded
        raise ConfigError(f"plugin {spec!r} called sys.exit({e.code!r}) while being imported; a plugin must "
                          "only define and register") from None
    except KeyboardInterrupt:
        raise ConfigError(f"plugin {spec!r} was interrupted while being imported (KeyboardInterrupt)") from None
    except Exception as e:  # noqa: BLE001  (a user's module may raise anything at import)
        first = first_line(e)
        raise ConfigError(f"plugin {spec!r} failed to import: {type(e).__name__}"
                          + (f": {first}" if first else "")) from None
    _LOADED[spec] = module
    IMPORTED[spec] = found_at
    # plugins, like any Python import, run code: say which, and from where, once: not again in each trial, Ray
    # Train worker or shard actor (they inherit CCR_PLUGINS_SHOWN; their lines would reach the console through Ray)
    if spec not in os.environ.get("CCR_PLUGINS_SHOWN", "").split("\n"):
        log.info("plugin %r imported from %s", spec, found_at["path"])
        print(f"ccr: plugin {spec!r} imported from {found_at['path']} (a plugin runs its code here)", file=sys.stderr)
        os.environ["CCR_PLUGINS_SHOWN"] = os.environ.get("CCR_PLUGINS_SHOWN", "") + f"\n{spec}"
    else:
        log.debug("plugin %r imported from %s", spec, found_at["path"])
    return module


def import_plugins(specs: object) -> None:
    """Every plugin of a config's `plugins` list, in order."""
    if specs is None:
        return
    if not isinstance(specs, list) or not all(isinstance(s, str) and s.strip() for s in specs):
        raise ConfigError(f"config key 'plugins': a list of module names or .py files, got {specs!r}"[:300])
    for s in specs:
        import_plugin(s.strip())
