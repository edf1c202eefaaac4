"""Typed dataclasses from plain mappings (YAML), strictly: unknown keys and wrong types are errors
that name the dotted key. Below `ccr.config.schema` so that strategies can check their own `Params` with it
without importing the config (which imports the strategy registry to validate names).
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from typing import Any, Union

from ccr.errors import ConfigError


def _short(value: Any) -> str:
    """A value as an error message shows it: bounded (a YAML alias bomb's value would expand without end)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 60, 60
    return r.repr(value)


_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{path}': must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, got {type(value).__name__} {_short(value)}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}': expected a list, got {type(value).__name__} {_short(value)}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, got {type(value).__name__} {_short(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads `3e-3` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected float, got {type(value).__name__} {_short(value)}")
        if not math.isfinite(value):  # .nan / .inf are floats to YAML; no ccr setting means them
            raise ConfigError(f"config key '{path}': must be a finite number, got {_short(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected int, got {type(value).__name__} {_short(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"config key '{path}': expected {tp.__name__}, got {type(value).__name__} "
                              f"{_short(value)}")
        return value
    raise ConfigError(f"config key '{path}': unsupported type {tp}")  # pragma: no cover


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by key path."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        kp = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{kp}' (valid keys here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], kp)
    return cls(**kwargs)
