"""ccr's error classes, in a module that imports nothing: every layer can raise them and the CLI can
catch them without importing torch. ConfigError is a usage error (exit 2); the others end a run at run
time (exit 1)."""


class ConfigError(ValueError):
    """A configuration problem, with the key path in the message."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the study stops (its last good checkpoint is kept)."""


class LockedError(RuntimeError):
    """Another ccr process holds the output folder: two writers would overwrite each other's results."""


class DataError(ValueError):
    """A problem with the dataset files, raised before training starts."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely: corrupt, truncated, or holding pickled code."""


class StorageError(RuntimeError):
    """A storage URI that cannot be opened, or a read that failed for a reason other than absence."""


class StorageWriteError(StorageError):
    """A write that failed (disk full, read-only, permissions): what was written before stays valid."""


# a wrong config or inputs that cannot be read: what a retry meets again, and what crosses a process boundary by
# its class's name (a shard actor's start, a sweep trial's earlier attempt)
INPUT_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, StorageError)


def input_error(name: str | None, default: type[Exception]) -> type[Exception]:
    """The class of INPUT_ERRORS called `name`, else `default`: to raise again, in this process, an error that
    another process reported by name."""
    return {c.__name__: c for c in INPUT_ERRORS}.get(name or "", default)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters ("" when it has none): what a one-line
    error or warning quotes of a library's longer message."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""
