"""SIGINT (Ctrl-C), SIGTERM and SIGUSR2 (SLURM's warning before pre-emption or the time
limit, as submitit asks for it) ask a run to stop after its current step."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopSignals:
    """While active, the first SIGINT, SIGTERM or SIGUSR2 sets `received` instead of killing the
    process; a second one gets the previous handler (Ctrl-C twice stops at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self.previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        return self

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc: object) -> None:
        """The handlers it replaced again, except where another was set meanwhile."""
        for s, handler in self.previous.items():
            if signal.getsignal(s) in (self.handle, handler):
                signal.signal(s, handler)


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM where no run is handling it (a run setting up, Hydra between a sweep's
    jobs), raised where the process is, as Ctrl-C raises KeyboardInterrupt: the run marks its
    folder and says so in one line instead of dying without a word. `sweep_dir`: the folder of
    the sweep under way in this process, if any."""

    def __init__(self, signum: int, sweep_dir: Path | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.sweep_dir = sweep_dir


def raise_stopped(sweep_dir: Path | None = None) -> None:
    """From now on SIGINT and SIGTERM raise `Stopped` (in the main thread), where no handler of
    a run's takes them; `sweep_dir`: that of the sweep this process runs."""
    if threading.current_thread() is not threading.main_thread():  # handlers live there only
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum, sweep_dir)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)


def signal_of(e: KeyboardInterrupt) -> int:
    """The signal a KeyboardInterrupt stands for (Ctrl-C's, unless it is a `Stopped`)."""
    return e.signum if isinstance(e, Stopped) else signal.SIGINT


def stopped_by(e: KeyboardInterrupt, how: str = "") -> str:
    """`stopped by Ctrl-C` or `stopped by SIGTERM`, `how` after "stopped"."""
    what = "Ctrl-C" if signal_of(e) == signal.SIGINT else signal.Signals(signal_of(e)).name
    return f"stopped {how}by {what}"
