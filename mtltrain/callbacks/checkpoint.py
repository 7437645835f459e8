"""Checkpoints of a run: the trainer's whole state, written atomically to one file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtltrain import checkpoint
from mtltrain.callbacks import Callback

if TYPE_CHECKING:
    from mtltrain.train import Trainer


class CheckpointCallback(Callback):
    """Writes `path` every `every` epochs (0: never in between), after the last epoch and when
    a signal stops the run; `run_info` (config, overrides) goes into each checkpoint."""

    def __init__(self, path: Path, every: int, run_info: dict[str, Any]) -> None:
        self.path, self.every, self.run_info = path, every, run_info
        self.saved_step: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.step:  # resumed: the checkpoint it came from is the last good one
            self.saved_step = trainer.step

    def on_epoch_end(self, trainer: Trainer) -> None:
        last = trainer.epoch == trainer.epochs
        if last or (self.every and trainer.epoch % self.every == 0):
            self.save(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        checkpoint.save(self.path, {"trainer": trainer.state_dict(), **self.run_info})
        self.saved_step = trainer.step

    def last_saved(self) -> tuple[Path, int] | None:
        """(path, step) of the last checkpoint this run wrote or resumed from."""
        return None if self.saved_step is None else (self.path, self.saved_step)
