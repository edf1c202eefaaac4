"""Errors that end a run at run time (not usage errors); light, so the CLI can catch them cheaply."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the study stops (its last good checkpoint is kept)."""


class LockedError(RuntimeError):
    """Another ccr process holds the output folder: two writers would overwrite each other's results."""
