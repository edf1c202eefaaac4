"""Helpers for tests that drive ccr as a user does: the repository root, and `--set` arguments."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _sets(items):
    """`--set KEY=VALUE` for each override, as the command line takes them."""
    return [x for o in items for x in ("--set", o)]
