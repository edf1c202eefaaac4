"""Config files as ccr reads them: strict YAML (a key given twice is an error), and `KEY=VALUE` overrides
parsed as YAML and set by dotted path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ccr.errors import ConfigError


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=VALUE` with VALUE parsed as YAML (so `[a,b]`, `1e-3`, `null` work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE (e.g. index.policy=no_reindex)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
    return key, value


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating intermediate mappings."""
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' is not a section; cannot set '{key}'")
        node = nxt
    node[parts[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML would keep the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str) -> Any:
    """YAML as ccr reads it: safe, and a duplicate key is an error, not last-one-wins."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = parse_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def read_tree(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The nested dict of an optional YAML file updated by `KEY=VALUE` overrides (not validated)."""
    tree: dict[str, Any] = read_yaml(path) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        set_path(tree, key, value)
    return tree
