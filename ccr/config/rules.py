"""Rules declared at the field they govern: `key(default, choices=..., ge=..., result=...)` is a dataclass field
whose metadata says which values it takes and whether it changes a study's numbers. `check_fields` derives the
checks (and their messages) from that metadata; `non_result_keys` derives which keys two studies may differ in
and still be the same study. Rules that tie several fields together are each section's `check()` method.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from ccr.errors import ConfigError

_NO_DEFAULT: Any = dataclasses.MISSING


def key(default: Any = _NO_DEFAULT, *, factory: Callable[[], Any] | None = None, choices: tuple | None = None,
        each: tuple | None = None, ge: float | None = None, gt: float | None = None, why: str = "",
        result: bool = True) -> Any:
    """A config field: `choices` (the value is one of them), `each` (every item of a list is one of them), `ge` /
    `gt` (a lower bound; None values pass), `why` (said after the bound in the error), `result` (False: the key
    never changes a number, e.g. where results are written, how many checkpoints are kept)."""
    meta = {"choices": choices, "each": each, "ge": ge, "gt": gt, "why": why, "result": result}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bound_problem(path: str, value: Any, meta: dict[str, Any]) -> str | None:
    why = f" ({meta['why']})" if meta.get("why") else ""
    if meta.get("ge") is not None and value < meta["ge"]:
        ge = meta["ge"]
        return f"config key '{path}': must be >= {int(ge) if float(ge).is_integer() else ge}{why}, got {value}"
    if meta.get("gt") is not None and value <= meta["gt"]:
        gt = meta["gt"]
        return f"config key '{path}': must be > {int(gt) if float(gt).is_integer() else gt}{why}, got {value}"
    return None


def _field_problem(path: str, value: Any, meta: dict[str, Any]) -> str | None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        shown = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in meta["choices"])
        return f"config key '{path}': {value!r} is not one of {shown}"
    if meta.get("each") is not None and isinstance(value, list):
        for v in value:
            if v not in meta["each"]:
                return f"config key '{path}': unknown value {v!r} (valid: {', '.join(meta['each'])})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _bound_problem(path, value, meta)
    return None


def check_fields(obj: Any, path: str = "") -> None:
    """Every declared choice and bound of `obj` (a config dataclass) and of its sections, then each section's own
    `check()`: one ConfigError naming the key, the first found in declaration order."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, where)
            continue
        problem = _field_problem(where, value, f.metadata)
        if problem:
            raise ConfigError(problem)
    if hasattr(obj, "check"):
        obj.check()


def non_result_keys(cls: type, path: str = "") -> list[str]:
    """The dotted keys (or whole sections) declared `result=False` in dataclass `cls` and its sections."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if not f.metadata.get("result", True):
            out.append(where)
        elif (sub := _section_type(cls, f.name)) is not None:
            out += non_result_keys(sub, where)
    return out


def _section_type(cls: type, name: str) -> type | None:
    """The dataclass of field `name` of `cls`, if it is a section (annotations are strings: resolved here)."""
    tp = typing.get_type_hints(cls).get(name)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None
