"""What the training loop calls besides the strategy: TensorBoard, checkpoints, the progress
bar, figures and the non-finite policy, each a `Callback` with the hooks it needs.

Each job of the loop (`mtltrain.loop._trainer.Trainer`) calls its own callbacks, in list order, each
hook handed the job (`mtltrain.loop._job.Job`): `on_fit_start`; per step
`allows_update` (False skips the optimizer step) and `on_step_end`; per epoch
`on_train_epoch_end` (before evaluating), `on_evaluation(metrics)` when it evaluates (metrics
by split: train, validation where held out, test),
`on_epoch_end` (after evaluating); `on_interrupt` when a signal stops the run; `on_fit_end`.
A callback reads the job it is handed and changes none of its state; the one way it
affects training is `allows_update` (the non-finite policy skips steps with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics
    from mtltrain.step import Step


class Callback:
    """Every hook is a no-op; subclasses define those they need."""

    def on_fit_start(self, job: Job) -> None:
        pass

    def allows_update(self, job: Job, step: Step) -> bool:
        return True

    def on_step_end(self, job: Job, step: Step) -> None:
        pass

    def on_train_epoch_end(self, job: Job) -> None:
        pass

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        pass

    def on_epoch_end(self, job: Job) -> None:
        pass

    def on_interrupt(self, job: Job) -> None:
        pass

    def on_fit_end(self, job: Job) -> None:
        pass


def hooked(callbacks: Sequence[Callback], hook: str) -> list[Callback]:
    """The callbacks that define `hook` themselves: the per-step hooks call only those."""
    base = getattr(Callback, hook)
    return [cb for cb in callbacks if getattr(type(cb), hook) is not base]
