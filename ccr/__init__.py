"""ccr: continual cross-modal retrieval with decoupled training, indexing and querying.

For notebooks: `ccr.run(...)` runs (or resumes) one study and returns its results, `ccr.load_results(path)`
reads results as the tables `ccr analyze` builds, `ccr.analyze(path)` writes the analysis. Extensions (your own
strategies, policies, dataset loaders) use `ccr.api`. Importing ccr imports nothing heavy: each function
imports what it needs when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccr._version import __version__

if TYPE_CHECKING:
    from ccr.notebook import analyze, load_results, run

__all__ = ["__version__", "analyze", "load_results", "run"]


def __getattr__(name: str):
    """`ccr.run`, `ccr.load_results`, `ccr.analyze`: ccr.notebook's, imported when first used (nothing heavy on
    `import ccr`)."""
    if name in ("analyze", "load_results", "run"):
        from ccr import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'ccr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
