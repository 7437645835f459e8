"""One training step as the strategies and the callbacks see it (`Step`), and how the loop
steps its jobs (`StepRunner`: the per-job step, `mtltrain.loop._job_step`, or the stacked step of
N jobs, `mtltrain.loop._stacked`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from mtltrain.data.base import Split
from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.models.base import Outputs


@dataclass
class Step:
    """A step of the loop: `number` counts from 1 over the run, `epoch` from 0; `outputs` are
    detached; `losses` are the term losses in term order, with their graph until the backward
    pass. After the backward pass `parts` holds each term's detached contribution to `total`,
    which is NaN where the step's combined gradient was not finite. `extra_batches` are the
    batches the strategy's `extra_batches` asked for, in that order, on the step's device.

    Under torchrun `batch` and `outputs` are this rank's shard (`share` of the global batch)
    and `losses` the global batch's; `ranks.sum` adds a shard's sums (or its part of a
    gradient) up over the ranks."""

    number: int
    epoch: int
    batch: Split
    outputs: Outputs
    losses: Tensor
    parts: Tensor | None = None
    total: Tensor | None = None
    share: float = 1.0
    ranks: Ranks = ONE_PROCESS
    extra_batches: tuple[Split, ...] = ()


class StepRunner(Protocol):
    """The steps of the loop's jobs, all at the same position: each active job (its `error`
    None) takes one step per call of `step`, on its own batch of its own shuffle."""

    def start_epoch(self) -> None:
        """Draw each job's order of its training set for its current epoch (drawn again when
        it resumes mid-epoch)."""
        ...

    def step(self, batch: int) -> None:
        """One step of every active job on batch number `batch` of its epoch's order."""
        ...

    def sync(self) -> None:
        """Hand each job what the steps since the last sync kept for it (running metrics and
        losses, optimizer state): the loop calls it before epoch ends and interrupts, the
        only times a job is evaluated or checkpointed."""
        ...
