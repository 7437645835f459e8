"""Errors a user can act on: the commands print them as one line and exit with their code
(argparse's errors too, through `OneLineParser`)."""

import argparse
import errno
import sys
from typing import NoReturn

# OSError numbers that mean a file cannot be written (a full or read-only disk, no permission)
UNWRITABLE = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's
    name when it has none: what a one-line error quotes of the exception behind it."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class MtlError(Exception):
    """Base class of the errors the CLI reports as a single line, without a traceback."""

    exit_code = 2


def checked_error(e: BaseException) -> "MtlError | None":
    """The error of mtltrain's own checks behind `e`, where `e` wraps one (OmegaConf raises an
    InterpolationResolutionError for a resolver's ConfigError, as its context): that error is
    the one line to print, not the wrapper's."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MtlError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class ConfigError(MtlError, ValueError):
    """A setting has a value the tool cannot use."""


class DataError(MtlError):
    """A data set is missing, truncated or corrupt."""


class CheckpointError(MtlError):
    """A checkpoint is missing, truncated, foreign, or does not fit the run."""


class RunFolderError(MtlError):
    """A run folder holds a run that would be overwritten."""


class OutputError(MtlError):
    """A file of the run could not be written (a full disk, a read-only folder)."""


class UnexpectedError(MtlError):
    """An error outside the tool's own checks: the one line names it; the log has the rest."""

    exit_code = 1


class TrainingError(MtlError):
    """Training cannot go on (a non-finite loss or weight)."""

    exit_code = 3


class RankLost(TrainingError):
    """Under torchrun: a rank stopped without a word (killed, or its machine lost) and the
    others cannot go on; `rank` is the one gone, where known."""

    def __init__(self, message: str, rank: int | None) -> None:
        super().__init__(message)
        self.rank = rank


class Interrupted(MtlError):
    """SIGINT, SIGTERM or SIGUSR2 stopped the run after a checkpoint; exit 128 + the signal
    number."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message, signal_number)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number

    def __str__(self) -> str:
        return str(self.args[0])


class Pruned(MtlError):
    """An Optuna sweep's pruner stopped the run's trial at an evaluation (the trial's
    objective was worse than the study's other trials' there): an outcome, not a fault."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line, without its usage block."""

    def error(self, message: str) -> NoReturn:
        print(
            f"{self.prog}: error: {message}: {self.prog} --help says what it takes", file=sys.stderr
        )
        raise SystemExit(2)
