"""ccr's error classes, in a module that imports nothing: every layer can raise them and the CLI can
catch them without importing torch. ConfigError is a usage error (exit 2); the others end a run at run
time (exit 1)."""


class ConfigError(ValueError):
    """A configuration problem, with the key path in the message."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the study stops (its last good checkpoint is kept)."""


class LockedError(RuntimeError):
    """Another ccr process holds the output folder: two writers would overwrite each other's results."""
