"""Typed, strict configuration: dataclasses loaded from YAML, each key's rules declared at its field."""
