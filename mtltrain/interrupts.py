"""SIGINT (Ctrl-C), SIGTERM and SIGUSR2 (SLURM's warning before pre-emption or the time
limit, as submitit asks for it) ask a run to stop after its current step."""

from __future__ import annotations

import signal
import threading
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
