"""The non-finite policy: a step whose loss, weighted loss or combined gradient is NaN or Inf
stops the run with one line (`trainer.nonfinite=stop`) or is skipped and counted (`skip`).

On CUDA in stop mode the check waits on the device: a `NonfiniteWatch` keeps the first bad step
there and is read at the next log step, at the end of an epoch and before a checkpoint, so no
step waits for the GPU and the checkpoint on disk stays the good one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtltrain.errors import TrainingError
from mtltrain.loop._callbacks import Callback
from mtltrain.losses import LossTerm

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.step import Step

LastCheckpoint = Callable[[], tuple[Path, int] | None]


def nonfinite_error(
    terms: Sequence[LossTerm],
    raw: torch.Tensor,
    parts: torch.Tensor,
    step: int,
    epoch: int,
    last_checkpoint: tuple[Path, int] | None,
) -> TrainingError:
    """The error for a step whose raw losses `raw`, weighted losses `parts` (one value per
    term) or combined gradient are not all finite: it names the first term with a bad loss,
    else with a bad weight, else the overflowing sum, else the gradient; the step and the last
    checkpoint."""
    bad_loss = next((i for i in range(len(terms)) if not raw[i].isfinite()), None)
    bad_weight = next((i for i in range(len(terms)) if not parts[i].isfinite()), None)
    if bad_loss is not None:
        what = (
            f"non-finite loss in task {terms[bad_loss].task} (term {terms[bad_loss].name}: "
            f"loss {raw[bad_loss].item():.4g}, weighted {parts[bad_loss].item():.4g})"
        )
    elif bad_weight is not None:
        what = (
            f"non-finite weight of term {terms[bad_weight].name} (loss "
            f"{raw[bad_weight].item():.4g}, weighted {parts[bad_weight].item():.4g})"
        )
    elif not parts.sum().isfinite():
        what = f"the weighted losses {parts.tolist()} overflow in their sum"
    else:
        what = "the combined gradient is not finite (the task Jacobian or its aggregation)"
    where = "none yet" if last_checkpoint is None else "{} (step {})".format(*last_checkpoint)
    return TrainingError(
        f"{what} at step {step}, epoch {epoch}; last good checkpoint: {where}; lower the "
        "learning rate, or set trainer.nonfinite=skip to skip such steps"
    )


class NonfiniteWatch:
    """Keeps, on the device, the first step whose total was not finite, with that step's raw
    and weighted losses; `first_bad` reads it back (one host read)."""

    def __init__(self, n_terms: int, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.losses = torch.zeros(2, n_terms, device=device)

    def see(self, step: int, raw: torch.Tensor, parts: torch.Tensor, total: torch.Tensor) -> None:
        first = (self.step < 0) & ~torch.isfinite(total)
        self.step = torch.where(first, step, self.step)
        self.losses = torch.where(first, torch.stack([raw, parts]).float(), self.losses)

    def first_bad(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(step, raw losses, weighted losses) of the first bad step, or None."""
        step = int(self.step)
        if step < 0:
            return None
        raw, parts = self.losses.cpu()
        return step, raw, parts


class NonfiniteGuard(Callback):
    """Vetoes (skip) or stops on (stop) a step whose total is not finite; with `watch`, the
    stop waits on the device (see the module). In skip mode the run fails at the end of the
    epoch in which more than `max_skipped` of all its steps have been skipped."""

    def __init__(
        self,
        terms: Sequence[LossTerm],
        policy: str,
        log_every: int,
        max_skipped: float,
        watch: NonfiniteWatch | None = None,
        last_checkpoint: LastCheckpoint = lambda: None,
    ) -> None:
        self.terms, self.policy, self.log_every = terms, policy, log_every
        self.max_skipped = max_skipped
        self.watch, self.last_checkpoint = watch, last_checkpoint

    def allows_update(self, job: Job, step: Step) -> bool:
        if self.watch is not None:
            self.watch.see(step.number, step.losses.detach(), step.parts, step.total)
            return True
        if math.isfinite(step.total.item()):  # one copy, where torch.isfinite is four ops
            return True
        if self.policy == "skip":
            return False
        raise self.error(job, step.number, step.losses.detach(), step.parts)

    def on_step_end(self, job: Job, step: Step) -> None:
        if self.watch is not None and step.number % self.log_every == 0:
            self.check(job)

    def on_train_epoch_end(self, job: Job) -> None:
        self.check(job)
        steps = job.epochs * job.batches_per_epoch
        if job.skipped_steps > self.max_skipped * steps:
            raise TrainingError(
                f"{job.skipped_steps} of the {job.step} steps so far were skipped as "
                f"non-finite, more than trainer.max_skipped={self.max_skipped} of the run's "
                f"{steps}: the run failed; lower the learning rate, or raise trainer.max_skipped"
            )

    def on_interrupt(self, job: Job) -> None:
        self.check(job)

    def check(self, job: Job) -> None:
        """Stop the run if the watch saw a non-finite step."""
        found = self.watch.first_bad() if self.watch is not None else None
        if found is not None:
            raise self.error(job, *found)

    def error(self, job: Job, step: int, raw: torch.Tensor, parts: torch.Tensor) -> TrainingError:
        epoch = (step - 1) // job.batches_per_epoch + 1
        return nonfinite_error(self.terms, raw, parts, step, epoch, self.last_checkpoint())
