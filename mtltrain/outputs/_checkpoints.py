"""Checkpoints of a run: its job's whole state, written atomically to one file (under the
key "trainer", as checkpoints have always had it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtltrain.loop._callbacks import Callback
from mtltrain.outputs import _checkpoint_file as checkpoint

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics


class CheckpointCallback(Callback):
    """Writes `path` at the first epoch end `interval` seconds after the last checkpoint (0:
    never so), every `every` epochs (0: never so), after the last epoch and when a signal
    stops the run; `run_info` (config, overrides) goes into each checkpoint. Checkpoints fall
    on epoch ends (or the step a signal stopped), from which a run resumes exactly. With
    `best`, the model and strategy states of the selected evaluation are written there each
    time the selection improves and at the end (last.pt holds them too, for a resume)."""

    def __init__(
        self,
        path: Path,
        every: int,
        interval: float,
        run_info: dict[str, Any],
        best: Path | None = None,
    ) -> None:
        self.path, self.every, self.interval, self.run_info = path, every, interval, run_info
        self.best = best
        self.saved_step: int | None = None
        self.saved_at = time.monotonic()

    def on_fit_start(self, job: Job) -> None:
        self.saved_at = time.monotonic()
        if job.step:  # resumed: the checkpoint it came from is the last good one
            self.saved_step = job.step

    def on_epoch_end(self, job: Job) -> None:
        last = job.epoch == job.epochs
        by_epoch = self.every and job.epoch % self.every == 0
        by_time = self.interval and time.monotonic() - self.saved_at >= self.interval
        if last or by_epoch or by_time:
            self.save(job)

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        if job.selection.improved:
            self.save_best(job)

    def on_fit_end(self, job: Job) -> None:
        self.save_best(job)  # a resumed run may have left a later, lost one behind

    def save_best(self, job: Job) -> None:
        """The selected evaluation's model and strategy states into `best`."""
        chosen = job.selection.chosen
        if self.best is None or chosen is None or "states" not in chosen:
            return
        model, weighting = chosen["states"]
        selected = {k: chosen[k] for k in ("epoch", "step", "value")}
        state = {"model": model, "weighting": weighting, "selected": selected}
        checkpoint.save(self.best, {**state, **self.run_info})

    def on_interrupt(self, job: Job) -> None:
        self.save(job)

    def save(self, job: Job) -> None:
        checkpoint.save(self.path, {"trainer": job.state_dict(), **self.run_info})
        self.saved_step, self.saved_at = job.step, time.monotonic()

    def last_saved(self) -> tuple[Path, int] | None:
        """(path, step) of the last checkpoint this run wrote or resumed from."""
        return None if self.saved_step is None else (self.path, self.saved_step)
