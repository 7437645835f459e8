"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class MtlError(Exception):
    """Base class of the errors the CLI reports as a single line, without a traceback."""


class ConfigError(MtlError, ValueError):
    """A setting has a value the tool cannot use."""


class DataError(MtlError):
    """A data set is missing, truncated or corrupt."""
