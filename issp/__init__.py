"""issp: Iterative Soft Shrinkage learning of sparse image super-resolution networks."""

__version__ = "0.1.0"


class IsspError(ValueError):
    """A user-facing error: bad arguments, unreadable files, mismatched checkpoints.

    The CLI prints its message on one line and exits with code 2; the app shows it.
    """
