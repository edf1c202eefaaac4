"""ccr: continual cross-modal retrieval with decoupled training, indexing and querying.

For notebooks: `ccr.run(...)` runs (or resumes) one study and returns its results, `ccr.load_results(path)`
reads results as the tables `ccr analyze` builds, `ccr.analyze(path)` writes the analysis. Extensions (your own
strategies, policies, dataset loaders) use `ccr.api`. Importing ccr imports nothing heavy: each function
imports what it needs when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccr._version import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from ccr.notebook import LoadedResults

__all__ = ["__version__", "analyze", "load_results", "run"]


def run(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None,
        out: str | Path = "runs/default", progress: bool = False) -> dict[str, Any]:
    """Run (or resume) one study, as `ccr run` does; returns the results also written to OUT/results.json.
    `config`: a YAML file, a nested dict, or None for the embedded default; `overrides`: `KEY=VALUE` strings."""
    from ccr.notebook import run as _run

    return _run(config, overrides, out, progress)


def load_results(path: str | Path) -> LoadedResults:
    """Every ccr result under a folder or storage URI, as the pandas tables `ccr analyze` builds."""
    from ccr.notebook import load_results as _load

    return _load(path)


def analyze(path: str | Path, out: str | Path | None = None, gallery_size: int | None = None,
            **cost: Any) -> Path | str:
    """Write the analysis of every result under `path` (tables, plots, report.html), as `ccr analyze`;
    `gallery_size` (with `price`, `images_per_second`, `captions_per_second`) adds the cost at that size."""
    from ccr.notebook import analyze as _analyze

    return _analyze(path, out, gallery_size, **cost)
