"""How the processes torchrun starts for one run report an error: in one line, printed once,
and written where torchrun's failure table reads it.

A mistake in the settings or the data, or a training error, is met by every rank alike. Rank 0
(which writes the run folder) prints it; every other rank waits, up to `WAIT_FOR_RANK_0_S`, for
torchrun to stop it once rank 0 has ended, and then exits with the same code without a word (one
still running after the wait prints its own line). An error that only one rank meets (an
unexpected one, printed with its traceback; rank 0 gone) is printed by that rank at once.
Every rank writes its line into the file torchrun names in TORCHELASTIC_ERROR_FILE: torchrun's
failure table shows it where it would show "<N/A>".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from time import sleep, time
from types import FrameType

from mtltrain.errors import MtlError, RankLost, UnexpectedError
from mtltrain.processes import rank

WAIT_FOR_RANK_0_S = 15.0


def report(e: MtlError) -> None:
    """Print and record `e` as this rank should (see the module's docstring); returns when the
    process is to exit with `e.exit_code`."""
    this = rank()
    line = f"mtltrain: error: {e}" if this == 0 else f"mtltrain: rank {this}: error: {e}"
    if this and not _only_here(e):
        _wait_for_rank_0(line, e.exit_code)
    record(line)
    print(line, file=sys.stderr)
    if this and isinstance(e, UnexpectedError) and e.__cause__ is not None:
        traceback.print_exception(e.__cause__, file=sys.stderr)  # this rank's log is not kept


def _only_here(e: MtlError) -> bool:
    """Whether rank 0 will not print `e`: an unexpected error, or rank 0 is gone."""
    return isinstance(e, UnexpectedError) or (isinstance(e, RankLost) and e.rank == 0)


def record(line: str) -> None:
    """Write `line` as this process's error into torchrun's error file, in the format of
    torch.distributed.elastic's ErrorHandler (torchrun shows the earliest rank's)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    error = {"message": {"message": line, "extraInfo": {"timestamp": str(int(time()))}}}
    with contextlib.suppress(OSError), open(path, "w") as f:
        json.dump(error, f)


def _wait_for_rank_0(line: str, exit_code: int) -> None:
    """Sleep up to WAIT_FOR_RANK_0_S; SIGTERM or SIGINT (torchrun stopping the ranks left once
    one has ended) exits at once with `exit_code`, `line` recorded but not printed."""

    def stopped(signum: int, frame: FrameType | None) -> None:
        record(line)
        raise SystemExit(exit_code)

    previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        sleep(WAIT_FOR_RANK_0_S)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
