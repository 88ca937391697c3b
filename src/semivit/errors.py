"""User-facing errors: the CLI prints these as one line, without a traceback."""


class SemivitError(Exception):
    """A problem with the user's input (paths, data, config) that they can fix.

    The message names the problem and the fix in one line.
    """


class NonFiniteLossError(SemivitError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""
