"""The version of ccr, in a module of its own: every module may import it without importing the package's
front door (ccr/__init__.py, which reaches the whole API)."""

__version__ = "0.1.0"
