"""ccr: continual cross-modal retrieval with decoupled training, indexing and querying."""

__version__ = "0.1.0"
