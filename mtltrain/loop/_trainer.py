"""The training loop, once for N ≥ 1 jobs (`mtltrain.loop._job.Job`): epochs of steps, signals,
epoch ends, and each job's error kept apart; nothing else.

The loop holds a `StepRunner` (`mtltrain.step`): the per-job step for a single job (N = 1,
`mtltrain.loop._job_step`) or the stacked step of N jobs of equal shapes
(`mtltrain.loop._stacked`), and never asks which. Every job is at the same position (epoch, batch,
step). An epoch: the runner draws each job's order, steps every active job batch by batch (under
torchrun the ranks agree on a stop signal after every step), then syncs (each job gets what the
runner kept for it) and each job ends its epoch (`Job.end_epoch`: `on_train_epoch_end` callbacks,
`strategy.on_epoch_end`, an evaluation when one is due, selection, `on_evaluation` and
`on_epoch_end` callbacks). SIGINT, SIGTERM and SIGUSR2 stop every job after the step, each
checkpointed by its callbacks (`Job.interrupt`). An error in one job's part stops that job alone;
one in the stacked step's shared part stops every job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mtltrain.errors import first_line
from mtltrain.interrupts import StopSignals
from mtltrain.loop._job import Job
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._stacked import StackedStep
from mtltrain.step import StepRunner

log = logging.getLogger(__name__)


def runner_for(jobs: Sequence[Job]) -> StepRunner:
    """The per-job step for one job (nothing of vmap to pay for), the stacked step for more
    (jobs `mtltrain.stacking.unstackable` lets train together)."""
    return PerJobStep(jobs[0]) if len(jobs) == 1 else StackedStep(jobs)


class Trainer:
    """Trains `jobs` together, all at the same position (see the module); `fit()` returns, per
    job, the error that stopped it, or None."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        self.runner = runner_for(self.jobs)
        first = self.jobs[0]
        self.ranks = first.ranks  # torchrun: one job (stacks are one process's)
        self.epochs, self.batches_per_epoch = first.epochs, first.batches_per_epoch
        self.epoch, self.batch = first.epoch, first.batch
        self.stop = StopSignals()

    def active(self) -> list[Job]:
        """The jobs no error has stopped."""
        return [job for job in self.jobs if job.error is None]

    def fit(self) -> list[BaseException | None]:
        """Train every job to its last epoch; a signal stops every job after a step, each with
        a checkpoint. A job that ends well ends in its selected state (trainer.select)."""
        for job in self.active():
            job.guarded(job.start)
        with self.stop:
            while self.epoch < self.epochs and self.active():
                try:
                    self.train_epoch()
                    if self.active():
                        self.end_epoch()
                except Exception as e:  # the runner's own, not one job's: it stops every job
                    for job in self.active():
                        job.fail(e)
        for job in self.active():
            job.guarded(job.finish)
        if len(self.jobs) > 1:
            for i, job in enumerate(self.jobs):
                if job.error is not None:
                    log.info("job %d of the stack stopped: %s", i, first_line(job.error))
        return [job.error for job in self.jobs]

    def train_epoch(self) -> None:
        """The rest of the current epoch."""
        runner = self.runner
        runner.start_epoch()
        for b in range(self.batch, self.batches_per_epoch):
            runner.step(b)
            self.batch = b + 1
            signum = self.ranks.agreed_signal(self.stop.received)
            if signum is not None:
                self.interrupt(signum)
                return

    def interrupt(self, signum: int) -> None:
        """Every active job checkpoints (by its callbacks) and stops, Interrupted."""
        self.runner.sync()
        for job in self.active():
            job.guarded(lambda job=job: job.interrupt(signum))

    def end_epoch(self) -> None:
        self.runner.sync()
        for job in self.active():
            job.guarded(job.end_epoch)
        self.epoch, self.batch = self.epoch + 1, 0


def train_alone(job: Job) -> None:
    """Fit one job (N = 1), raising the error that stopped it."""
    (error,) = Trainer([job]).fit()
    if error is not None:
        raise error
